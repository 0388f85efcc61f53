//! Per-thread pools of I/O buffers.
//!
//! A pool is a few size classes, each one [`ffi::IoSlab`] carved into equal chunks at start:
//! taking and returning a buffer is a push/pop on the class's free list, never an
//! allocation, and the memory a thread uses for I/O is fixed (an exhausted pool makes the
//! caller wait, it never grows). Engines that need to know the memory (the nvme-pcie engine
//! maps each slab for its controller's DMA) see the slabs through [`BufPool::slabs`].

use std::cell::RefCell;
use std::rc::Rc;

use ffi::{IoChunk, IoSlab};

/// One size class: `count` buffers of `size` bytes (a multiple of 4 KiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolClass {
    /// Buffer size in bytes.
    pub size: usize,
    /// Number of buffers.
    pub count: usize,
}

struct Class {
    size: usize,
    count: usize,
    slab: IoSlab,
    free: RefCell<Vec<IoChunk>>,
}

struct Inner {
    classes: Vec<Class>,
}

/// A thread's I/O buffers. Cheap to clone (a shared handle); not `Send`.
#[derive(Clone)]
pub struct BufPool {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for BufPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("BufPool");
        for c in &self.inner.classes {
            d.field(
                &c.size.to_string(),
                &format!("{}/{}", c.free.borrow().len(), c.count),
            );
        }
        d.finish()
    }
}

/// The class of a piece split off a buffer (see [`IoBuf::split_off`]).
const PIECE: usize = usize::MAX;

/// Buffers are 4 KiB aligned and sized: the NVMe page, and what O_DIRECT asks.
const ALIGN: usize = 4096;

impl BufPool {
    /// A pool with the given classes (sizes are rounded up to 4 KiB; classes are kept in
    /// increasing size).
    pub fn new(classes: &[PoolClass]) -> Result<Self, ffi::Error> {
        let mut sorted: Vec<PoolClass> = classes
            .iter()
            .filter(|c| c.count > 0)
            .map(|c| PoolClass {
                size: c.size.max(1).div_ceil(ALIGN) * ALIGN,
                count: c.count,
            })
            .collect();
        sorted.sort_by_key(|c| c.size);
        let mut built = Vec::with_capacity(sorted.len());
        for c in sorted {
            let total = c
                .size
                .checked_mul(c.count)
                .ok_or_else(|| ffi::Error::Setup("buffer pool size overflows".into()))?;
            let slab = IoSlab::new(total)?;
            let chunks = slab.clone().carve(c.size, c.count)?;
            built.push(Class {
                size: c.size,
                count: c.count,
                slab,
                free: RefCell::new(chunks),
            });
        }
        Ok(Self {
            inner: Rc::new(Inner { classes: built }),
        })
    }

    /// A small pool for tests and tools: `count` buffers of each of 4 KiB, 64 KiB and 1 MiB.
    pub fn small(count: usize) -> Result<Self, ffi::Error> {
        Self::new(&[
            PoolClass { size: 4096, count },
            PoolClass {
                size: 64 << 10,
                count,
            },
            PoolClass {
                size: 1 << 20,
                count,
            },
        ])
    }

    /// A buffer of at least `len` bytes (the smallest free one), or `None` when every class
    /// that could hold it is taken: the caller waits for a buffer to come back.
    pub fn get(&self, len: usize) -> Option<IoBuf> {
        let len = len.max(1);
        for (i, c) in self.inner.classes.iter().enumerate() {
            if c.size < len {
                continue;
            }
            if let Some(chunk) = c.free.borrow_mut().pop() {
                return Some(IoBuf {
                    chunk: Some(chunk),
                    start: 0,
                    len,
                    class: i,
                    pool: Rc::clone(&self.inner),
                });
            }
        }
        None
    }

    /// The largest buffer the pool has.
    pub fn max_size(&self) -> usize {
        self.inner.classes.last().map_or(0, |c| c.size)
    }

    /// The slabs behind the classes (for engines that map them for a device).
    pub fn slabs(&self) -> Vec<IoSlab> {
        self.inner.classes.iter().map(|c| c.slab.clone()).collect()
    }

    /// Buffers free now, over all classes.
    pub fn free(&self) -> usize {
        self.inner
            .classes
            .iter()
            .map(|c| c.free.borrow().len())
            .sum()
    }
}

/// A buffer from a [`BufPool`], back to it when dropped. It has a capacity (its chunk) and a
/// window `[start, start + len)` that [`IoBuf::as_slice`] shows: engines fill it from the
/// start, and a caller that read whole blocks for an unaligned range narrows the window to
/// the bytes it asked for.
pub struct IoBuf {
    chunk: Option<IoChunk>,
    start: usize,
    len: usize,
    class: usize,
    pool: Rc<Inner>,
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuf")
            .field("capacity", &self.capacity())
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

impl IoBuf {
    fn chunk(&self) -> &IoChunk {
        self.chunk.as_ref().expect("an IoBuf always has its chunk")
    }

    /// Bytes the buffer can hold.
    pub fn capacity(&self) -> usize {
        self.chunk().len()
    }

    /// Length of the window.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the window in the buffer.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Sets the window to `len` bytes at `start`.
    ///
    /// # Panics
    ///
    /// If the window does not fit the buffer (a caller bug).
    pub fn set_window(&mut self, start: usize, len: usize) {
        assert!(
            start.checked_add(len).is_some_and(|e| e <= self.capacity()),
            "window {start}+{len} outside a buffer of {}",
            self.capacity()
        );
        self.start = start;
        self.len = len;
    }

    /// The window's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.chunk().as_slice()[self.start..self.start + self.len]
    }

    /// The window's bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let (start, len) = (self.start, self.len);
        let chunk = self.chunk.as_mut().expect("an IoBuf always has its chunk");
        &mut chunk.as_mut_slice()[start..start + len]
    }

    /// The whole buffer, writable (engines fill it from the start).
    pub fn full_mut(&mut self) -> &mut [u8] {
        self.chunk
            .as_mut()
            .expect("an IoBuf always has its chunk")
            .as_mut_slice()
    }

    /// The whole buffer.
    pub fn full(&self) -> &[u8] {
        self.chunk().as_slice()
    }

    /// Process address of the slab the buffer is carved from, and the buffer's offset in it
    /// (engines find the buffer's device address from these).
    pub fn placement(&self) -> (u64, usize) {
        let c = self.chunk();
        (c.slab_vaddr(), c.offset())
    }

    /// Splits off the bytes from `at` on as a buffer of their own (window: all of it), so
    /// the pieces of one request can be at different devices at once. The piece must come
    /// back with [`IoBuf::unsplit`]; a piece dropped on its own is not reused.
    pub(crate) fn split_off(&mut self, at: usize) -> IoBuf {
        let chunk = self
            .chunk
            .as_mut()
            .expect("an IoBuf always has its chunk")
            .split_off(at);
        let len = chunk.len();
        self.start = self.start.min(at);
        self.len = self.len.min(at - self.start);
        IoBuf {
            chunk: Some(chunk),
            start: 0,
            len,
            class: PIECE,
            pool: Rc::clone(&self.pool),
        }
    }

    /// Joins a piece split off this buffer (the range right after it) back on.
    pub(crate) fn unsplit(&mut self, mut piece: IoBuf) -> Result<(), IoBuf> {
        let chunk = piece.chunk.take().expect("an IoBuf always has its chunk");
        let me = self.chunk.as_mut().expect("an IoBuf always has its chunk");
        match me.unsplit(chunk) {
            Ok(()) => Ok(()),
            Err(chunk) => {
                piece.chunk = Some(chunk);
                Err(piece)
            }
        }
    }

    /// Takes the memory out to lend it to another thread (a blocking-I/O worker); the shell
    /// stays with the owner and gets it back with [`IoBuf::put_chunk`].
    pub(crate) fn take_chunk(&mut self) -> IoChunk {
        self.chunk.take().expect("an IoBuf always has its chunk")
    }

    /// Puts the memory back after [`IoBuf::take_chunk`].
    pub(crate) fn put_chunk(&mut self, chunk: IoChunk) {
        self.chunk = Some(chunk);
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        // A shell whose chunk is lent out was leaked on purpose (see `take_chunk`), and a
        // piece is only part of a class's buffer.
        if self.class == PIECE {
            return;
        }
        if let Some(chunk) = self.chunk.take() {
            let class = &self.pool.classes[self.class];
            // A buffer whose piece never came back is short: it is not reused.
            if chunk.len() == class.size {
                class.free.borrow_mut().push(chunk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_from_the_smallest_class_and_go_back() {
        let pool = BufPool::new(&[
            PoolClass {
                size: 64 << 10,
                count: 1,
            },
            PoolClass {
                size: 4096,
                count: 2,
            },
        ])
        .unwrap();
        assert_eq!(pool.free(), 3);
        let a = pool.get(100).unwrap();
        assert_eq!(a.capacity(), 4096);
        assert_eq!(a.len(), 100);
        let b = pool.get(4096).unwrap();
        // 4 KiB class empty: the next small request takes the larger class.
        let c = pool.get(1).unwrap();
        assert_eq!(c.capacity(), 64 << 10);
        assert!(pool.get(1).is_none(), "exhausted: the pool does not grow");
        assert!(pool.get(1 << 20).is_none(), "no class is large enough");
        drop((a, b, c));
        assert_eq!(pool.free(), 3);
    }

    #[test]
    fn the_window_narrows_what_the_caller_sees() {
        let pool = BufPool::small(1).unwrap();
        let mut b = pool.get(4096).unwrap();
        for (i, x) in b.full_mut().iter_mut().enumerate() {
            *x = u8::try_from(i % 256).unwrap();
        }
        b.set_window(10, 3);
        assert_eq!(b.as_slice(), &[10, 11, 12]);
        b.as_mut_slice()[0] = 99;
        assert_eq!(b.full()[10], 99);
        assert!(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.set_window(4000, 200)))
                .is_err()
        );
    }
}
