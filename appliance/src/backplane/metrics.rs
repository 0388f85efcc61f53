//! Lock-free per-device counters, read by the metrics exporter.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one backplane device, summed over every controller's handle.
#[derive(Debug, Default)]
pub struct DeviceMetrics {
    /// Read operations.
    pub reads: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Write operations.
    pub writes: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Flushes.
    pub flushes: AtomicU64,
    /// Deallocate and write-zeroes operations.
    pub trims: AtomicU64,
    /// Operations that failed.
    pub errors: AtomicU64,
}

impl DeviceMetrics {
    /// Counts one operation's outcome.
    pub(crate) fn count<T>(
        &self,
        ops: &AtomicU64,
        bytes: Option<(&AtomicU64, u64)>,
        result: &std::io::Result<T>,
    ) {
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        ops.fetch_add(1, Ordering::Relaxed);
        if let Some((counter, n)) = bytes {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}
