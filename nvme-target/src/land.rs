//! Writes whose data lands straight in the device's memory (SPDK's zero-copy bdev I/O,
//! `zcopy`): for a namespace on RAM devices, the host's bytes go from the socket (H2CData)
//! or the input buffer (in-capsule data) into the device's mapping, with no device buffer
//! from the pool and no copy out of it.
//!
//! What a write checks before its data moves is what it would check before its request
//! went to the device: its range lock (taken when the R2T goes out, so a fused Compare and
//! Write never sees its range change under it), its reservation and the namespace. A write
//! whose lock is taken by a fused operation, or whose device has no mapping, or which has
//! data digests to check, takes the pool-buffer path instead; so does an R2T write to a
//! namespace with reservations in use, which meets the reservation once its data is in (a
//! preempted host's data never lands after the preemption). A host registering while a
//! write's data lands fences that write off ([`Landing::fenced`]). A write that fails after
//! its data started to land (fenced, aborted, its connection closed) leaves those blocks
//! indeterminate, as the NVMe specification allows for a failed write.

use std::rc::Rc;

use bdev::Extent;
use nvme_spec::cmds::IoCmd;
use nvme_spec::command::{Sqe, io_opcode};

use crate::completion::Command;
use crate::conn::Conn;
use crate::io::IoReq;
use crate::locks::RangeGuard;
use crate::port::PortNamespace;

/// What a write whose data lands in the device holds until it completes.
pub(crate) struct Landing {
    /// The write's range lock, taken before its first byte landed.
    pub guard: RangeGuard,
    ns: Rc<PortNamespace>,
}

impl Landing {
    /// Whether the rest of the data must not land: a host registered with the namespace
    /// since the R2T went out, so a Preempt and Abort may be fencing this host off. Its
    /// data goes nowhere from then on and the write fails with a retryable status (a write
    /// on the buffer path would meet the reservation when it runs).
    pub fn fenced(&self) -> bool {
        self.ns.state.resv.active()
    }
}

impl Conn {
    /// Where the data of `sqe` (an R2T's command) may land: the device's memory for its
    /// blocks, appended to `out`, and the write's range lock; `None` (nothing appended) for
    /// the pool-buffer path.
    pub(crate) fn r2t_landing(
        &self,
        sqe: &Sqe,
        cmd: &Command,
        out: &mut Vec<Extent>,
    ) -> Option<Landing> {
        if self.dg.data || !matches!(cmd, Command::Io(IoCmd::Write(_))) {
            return None;
        }
        let q = self.q.as_ref()?;
        let ns = self.port.namespace(q.ctrl.subsys, sqe.nsid.get())?;
        // With reservations in use the data goes to a buffer, and the write meets the
        // reservation as it is once the data is in (a preempted host's data never lands).
        if ns.state.resv.active() {
            return None;
        }
        // A lock taken for a device that has no mapping is dropped: the write takes it
        // again once its data is in.
        landing(sqe, &ns, out).ok()
    }

    /// Copies in-capsule write data straight into the device when it may land there.
    /// Returns the landed write's lock, or `None` for the pool path; a range lock taken on
    /// the way stays in `req` for that path, so a write takes it once either way.
    pub(crate) fn land_in_capsule(&mut self, req: &mut IoReq, data: &[u8]) -> Option<Landing> {
        let ns = Rc::clone(req.ns.as_ref()?);
        let mut ext = std::mem::take(&mut self.extents);
        ext.clear();
        let landed = match landing(&req.sqe, &ns, &mut ext) {
            Ok(l) if Extent::copy_in(&ext, 0, data).is_ok() => Some(l),
            Ok(l) => {
                req.guard = Some(l.guard);
                None
            }
            Err(guard) => {
                req.guard = guard;
                None
            }
        };
        ext.clear();
        self.extents = ext;
        landed
    }

    /// A write whose data all landed in the device: counted, flushed when the cache is
    /// off, answered.
    pub(crate) fn write_landed(&mut self, mut req: IoReq, landing: Landing) {
        let bytes = u64::from(req.sqe.dptr.length.get());
        req.guard = Some(landing.guard);
        let ns = req.ns.clone();
        self.count_write(ns.as_deref(), bytes);
        let idx = self.reqs.insert(req);
        self.after_write(idx);
    }
}

/// The range lock and the device memory of a write's blocks, if both are to be had;
/// otherwise the lock alone when the device has no mapping for them, or nothing when the
/// range is taken (or the command is no plain write).
fn landing(
    sqe: &Sqe,
    ns: &Rc<PortNamespace>,
    out: &mut Vec<Extent>,
) -> Result<Landing, Option<RangeGuard>> {
    if sqe.opcode != io_opcode::WRITE {
        return Err(None);
    }
    let start = sqe.slba();
    let guard = ns
        .state
        .locks
        .write_begin(start, start.saturating_add(u64::from(sqe.nlb())))
        .ok_or(None)?;
    let bs = u64::from(ns.cfg.block_size);
    let (offset, len) = (start * bs, u64::from(sqe.nlb()) * bs);
    if !ns.dev.write_extents(offset, len, out) {
        return Err(Some(guard));
    }
    Ok(Landing {
        guard,
        ns: Rc::clone(ns),
    })
}
