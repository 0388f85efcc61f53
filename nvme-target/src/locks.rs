//! LBA range locks of one namespace, shared by every controller thread: what makes a fused
//! Compare and Write atomic against the writes (Write, Write Zeroes, Dataset Management
//! deallocate) of every other queue.
//!
//! The normal write path stays lock-free: while no fused operation is active a write only
//! counts itself in an atomic ([`RangeLocks::write_begin`]). A fused operation first raises
//! the active count, which sends every later write through the lock table, then waits for
//! the writes counted without a lock to drain, and takes its range; a write that overlaps a
//! taken range waits for it (the connection retries it on its next turn). Nothing here
//! blocks a thread: "wait" is always "try again later", and every holder is an operation at
//! a device, which has deadlines of its own.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The range locks of one namespace.
#[derive(Debug, Default)]
pub(crate) struct RangeLocks {
    /// Fused operations holding or waiting for a range.
    fused: AtomicUsize,
    /// Writes in flight that took no lock (started while no fused operation was active).
    unlocked: AtomicUsize,
    /// Taken ranges: first block, end block (exclusive), token.
    held: Mutex<Vec<(u64, u64, u64)>>,
    next_token: AtomicU64,
}

/// What a command holds of its namespace's range locks; dropping it gives everything back.
#[derive(Debug)]
pub(crate) struct RangeGuard {
    locks: Arc<RangeLocks>,
    /// Counted in `unlocked`.
    unlocked: bool,
    /// Counted in `fused`.
    fused: bool,
    /// A taken range.
    token: Option<u64>,
}

impl RangeLocks {
    fn table(&self) -> MutexGuard<'_, Vec<(u64, u64, u64)>> {
        // Every update is one push or retain: a poisoned table is still consistent.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `[start, end)` in the table unless an overlapping range is taken.
    fn take(&self, start: u64, end: u64) -> Option<u64> {
        self.take_all(&[(start, end)])
    }

    /// Takes every range `[start, end)` of `ranges` under one token, or none of them if
    /// any overlaps a taken range.
    fn take_all(&self, ranges: &[(u64, u64)]) -> Option<u64> {
        let mut held = self.table();
        let overlaps =
            |&(start, end): &(u64, u64)| held.iter().any(|&(s, e, _)| s < end && start < e);
        if ranges.iter().any(overlaps) {
            return None;
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        held.extend(ranges.iter().map(|&(s, e)| (s, e, token)));
        Some(token)
    }

    /// A write of blocks `[start, end)` may start with the guard; `None`: it overlaps a fused
    /// operation's range and must wait.
    pub fn write_begin(self: &Arc<Self>, start: u64, end: u64) -> Option<RangeGuard> {
        self.write_begin_ranges(&[(start, end)])
    }

    /// [`RangeLocks::write_begin`] for a command of several ranges (Dataset Management):
    /// all of them, or a wait.
    pub fn write_begin_ranges(self: &Arc<Self>, ranges: &[(u64, u64)]) -> Option<RangeGuard> {
        // Counted first, checked second; a fused operation raises `fused` first and checks
        // `unlocked` second, so at least one of the two sees the other (SeqCst).
        self.unlocked.fetch_add(1, Ordering::SeqCst);
        if self.fused.load(Ordering::SeqCst) == 0 {
            return Some(self.guard(true, false, None));
        }
        self.unlocked.fetch_sub(1, Ordering::SeqCst);
        let token = self.take_all(ranges)?;
        Some(self.guard(false, false, Some(token)))
    }

    /// Announces a fused operation: from now on writes consult the table. The guard keeps it
    /// announced until it is dropped.
    pub fn fused_begin(self: &Arc<Self>) -> RangeGuard {
        self.fused.fetch_add(1, Ordering::SeqCst);
        self.guard(false, true, None)
    }

    /// Takes `[start, end)` for an announced fused operation once the unlocked writes have
    /// drained and no overlapping range is taken; gives the guard back otherwise.
    pub fn fused_lock(
        &self,
        mut g: RangeGuard,
        start: u64,
        end: u64,
    ) -> Result<RangeGuard, RangeGuard> {
        if self.unlocked.load(Ordering::SeqCst) != 0 {
            return Err(g);
        }
        match self.take(start, end) {
            Some(t) => {
                g.token = Some(t);
                Ok(g)
            }
            None => Err(g),
        }
    }

    fn guard(self: &Arc<Self>, unlocked: bool, fused: bool, token: Option<u64>) -> RangeGuard {
        RangeGuard {
            locks: Arc::clone(self),
            unlocked,
            fused,
            token,
        }
    }
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        if let Some(t) = self.token {
            self.locks.table().retain(|&(_, _, k)| k != t);
        }
        if self.unlocked {
            self.locks.unlocked.fetch_sub(1, Ordering::SeqCst);
        }
        if self.fused {
            self.locks.fused.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_take_no_lock_while_no_fused_operation_is_active() {
        let l = Arc::new(RangeLocks::default());
        let w = l.write_begin(0, 8).unwrap();
        assert!(w.token.is_none() && l.table().is_empty());
        // The fused operation waits for the unlocked write to finish.
        let f = l.fused_begin();
        let f = l.fused_lock(f, 0, 8).unwrap_err();
        drop(w);
        let f = l.fused_lock(f, 0, 8).unwrap();
        // Overlapping writes wait; others go through the table.
        assert!(l.write_begin(7, 9).is_none());
        let other = l.write_begin(8, 16).unwrap();
        assert!(other.token.is_some());
        // A second fused operation on the same range waits too.
        let f2 = l.fused_lock(l.fused_begin(), 4, 5).unwrap_err();
        drop(f);
        let f2 = l.fused_lock(f2, 4, 5).unwrap();
        drop((f2, other));
        assert!(l.table().is_empty());
        assert_eq!(l.fused.load(Ordering::SeqCst), 0);
        assert_eq!(l.unlocked.load(Ordering::SeqCst), 0);
        assert!(l.write_begin(0, 8).unwrap().token.is_none());
    }

    #[test]
    fn a_command_of_several_ranges_takes_all_or_none() {
        let l = Arc::new(RangeLocks::default());
        let f = l.fused_lock(l.fused_begin(), 10, 20).unwrap();
        // One range overlaps the fused operation's: none is taken.
        assert!(l.write_begin_ranges(&[(0, 4), (19, 30)]).is_none());
        assert_eq!(l.table().len(), 1);
        let g = l.write_begin_ranges(&[(0, 4), (20, 30)]).unwrap();
        assert_eq!(l.table().len(), 3);
        // Both ranges stay taken until the guard goes.
        assert!(l.write_begin(2, 3).is_none() && l.write_begin(25, 26).is_none());
        drop(g);
        assert_eq!(l.table().len(), 1);
        drop(f);
        assert!(l.write_begin_ranges(&[(10, 20)]).unwrap().token.is_none());
    }
}
