//! The process's descriptor budget: how many connections all listeners together may hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors connections may take, shared by every listener of the process. Clones share
/// one count.
#[derive(Debug, Clone)]
pub struct Budget {
    left: Arc<AtomicUsize>,
    capacity: usize,
}

impl Budget {
    /// A budget of `capacity` connections.
    pub fn new(capacity: usize) -> Self {
        Self {
            left: Arc::new(AtomicUsize::new(capacity)),
            capacity,
        }
    }

    /// The budget for a process whose descriptor limit is `limit`, keeping `reserved`
    /// descriptors for everything that is not a connection (devices, files, epoll, pipes).
    pub fn for_descriptor_limit(limit: u64, reserved: usize) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Self::new(limit.saturating_sub(reserved))
    }

    /// Connections the budget allows in all.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Connections it allows now.
    pub fn available(&self) -> usize {
        self.left.load(Ordering::Acquire)
    }

    /// Takes one place; false when none is left.
    pub fn try_take(&self) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Gives one place back.
    pub fn release(&self) {
        self.left.fetch_add(1, Ordering::AcqRel);
    }
}

/// Raises the soft descriptor limit to the hard one (as nginx's `worker_rlimit_nofile` or
/// systemd's services do) and returns the soft limit now in force.
pub fn raise_descriptor_limit() -> std::io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Ok(hard);
    }
    Ok(soft)
}
