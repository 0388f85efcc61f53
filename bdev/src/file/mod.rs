//! The file engine: a file or block device every controller thread reaches through its own
//! io_uring (reads and writes in flight together, completions reaped by the thread's
//! reactor), or, where the kernel offers no io_uring, through a small pool of threads doing
//! the blocking calls. O_DIRECT files read into and write from the pool's aligned buffers
//! with no copy; buffered files also offer `sendfile` extents.

mod threads;
mod uring;

use std::fs::File;
use std::io;
use std::rc::Rc;
use std::sync::Arc;

pub use threads::ThreadIo;
pub use uring::UringIo;

use crate::{BlockIo, Extent, Geometry, Request, Sink};

/// How a thread's handle does its I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// io_uring, falling back to threads when the kernel refuses it.
    Auto,
    /// io_uring only.
    Uring,
    /// The blocking-call thread pool.
    Threads,
}

/// A file device, shared by every thread.
#[derive(Debug, Clone)]
pub struct FileDevice {
    file: Arc<File>,
    geometry: Geometry,
    direct: bool,
    threads: Arc<threads::Pool>,
}

/// Blocking-call threads per file device (used only where io_uring is not).
const POOL_THREADS: usize = 2;

impl FileDevice {
    /// Serves `size` bytes of `file` (rounded down to whole blocks). `direct` says the file
    /// was opened with O_DIRECT (its reads must not be bypassed through the page cache).
    pub fn new(file: File, size: u64, block_size: u32, direct: bool) -> Self {
        let size = size - size % u64::from(block_size.max(1));
        Self {
            file: Arc::new(file),
            geometry: Geometry {
                block_size,
                size,
                optimal_boundary: 0,
                volatile_cache: !direct,
            },
            direct,
            threads: Arc::new(threads::Pool::new(POOL_THREADS)),
        }
    }

    /// The device's shape.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The open file.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// A handle for the calling thread (which must be inside a `LocalSet`: the handle's
    /// completion poller is a local task).
    pub fn open(&self, engine: Engine, depth: u32) -> io::Result<FileIo> {
        let kind = match engine {
            Engine::Threads => Kind::Threads(ThreadIo::new(self.clone())),
            Engine::Uring => Kind::Uring(UringIo::new(self.clone(), depth)?),
            Engine::Auto => match UringIo::new(self.clone(), depth) {
                Ok(u) => Kind::Uring(u),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable: file I/O uses a thread pool");
                    Kind::Threads(ThreadIo::new(self.clone()))
                }
            },
        };
        Ok(FileIo {
            kind,
            dev: self.clone(),
        })
    }
}

enum Kind {
    Uring(UringIo),
    Threads(ThreadIo),
}

/// One thread's handle on a [`FileDevice`].
pub struct FileIo {
    kind: Kind,
    dev: FileDevice,
}

impl FileIo {
    /// Times the handle has entered the kernel to submit (io_uring only; 0 for threads).
    pub fn submit_calls(&self) -> u64 {
        match &self.kind {
            Kind::Uring(u) => u.enters(),
            Kind::Threads(_) => 0,
        }
    }

    /// Which engine the handle uses.
    pub fn engine(&self) -> Engine {
        match self.kind {
            Kind::Uring(_) => Engine::Uring,
            Kind::Threads(_) => Engine::Threads,
        }
    }
}

impl BlockIo for FileIo {
    fn geometry(&self) -> Geometry {
        self.dev.geometry
    }

    fn submit(&self, req: Request, sink: &Rc<dyn Sink>) {
        match &self.kind {
            Kind::Uring(u) => u.submit(req, sink),
            Kind::Threads(t) => t.submit(req, sink),
        }
    }

    fn in_flight(&self) -> usize {
        match &self.kind {
            Kind::Uring(u) => u.in_flight(),
            Kind::Threads(t) => t.in_flight(),
        }
    }

    fn extents(&self, offset: u64, len: u64, files: bool, out: &mut Vec<Extent>) -> bool {
        // O_DIRECT files must not be read through the page cache behind their back.
        files
            && !self.dev.direct
            && Extent::whole_file(&self.dev.file, self.dev.geometry.size, offset, len, out)
    }
}

#[cfg(test)]
mod tests;
