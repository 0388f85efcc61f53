//! Abort (Base 5.1): a command that has not started is aborted: one waiting for its data
//! (queued for an R2T, or with its R2T answered only in part) or a read waiting for a device
//! buffer. Anything else is at the device or done, and is reported as not aborted.
//!
//! The Abort arrives on the admin queue's connection, the command waits on an I/O queue's
//! (possibly on another controller thread). Each I/O queue publishes the commands it is
//! waiting on in an [`AbortBox`] the controller can reach; the admin side records the
//! request and wakes the I/O connection, which completes a queued command (or buffer
//! waiter) at once with Command Abort Requested, and one whose R2T is out when its data has
//! arrived (the host must send what it was asked for), without executing either.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use nvme_spec::cmds::Abort;
use tokio::sync::Notify;

use crate::cell::lock;
use crate::completion::{Completion, Error};
use crate::conn::Conn;
use crate::ctrl::Ctrl;

/// Abort dword 0 bit 0: the command was not aborted.
const NOT_ABORTED: u64 = 1;

/// One I/O queue's commands that wait for data, and the aborts asked for them. The admin
/// queue may be served by another thread, so both lists sit under one lock (taken only by
/// commands that wait for an R2T, and by Abort): an abort is granted only for a command that
/// is waiting at that moment.
#[derive(Debug, Default)]
pub(crate) struct AbortBox {
    lists: Mutex<Lists>,
    /// Wakes the queue's connection when an abort is requested.
    pub wake: Notify,
}

#[derive(Debug, Default)]
struct Lists {
    /// Command IDs waiting for host data (an R2T queued or sent).
    awaiting: Vec<u16>,
    /// Command IDs an Abort asked for, not yet completed.
    requested: Vec<u16>,
}

impl AbortBox {
    /// Records that command `cid` waits for its data.
    pub fn waiting_for_data(&self, cid: u16) {
        lock(&self.lists).awaiting.push(cid);
    }

    /// Records that command `cid` no longer waits; returns whether an abort was asked for it.
    pub fn data_done(&self, cid: u16) -> bool {
        let mut l = lock(&self.lists);
        l.awaiting.retain(|&c| c != cid);
        let before = l.requested.len();
        l.requested.retain(|&c| c != cid);
        l.requested.len() != before
    }

    /// Forgets every command (the queue is going away).
    pub fn clear(&self) {
        let mut l = lock(&self.lists);
        l.awaiting.clear();
        l.requested.clear();
    }

    /// The commands an abort was asked for.
    fn requested(&self) -> Vec<u16> {
        lock(&self.lists).requested.clone()
    }

    /// Asks for command `cid` to be aborted; false if it is not waiting for data.
    fn request(&self, cid: u16) -> bool {
        let mut l = lock(&self.lists);
        if !l.awaiting.contains(&cid) || l.requested.contains(&cid) {
            return false;
        }
        l.requested.push(cid);
        drop(l);
        self.wake.notify_one();
        true
    }
}

impl Conn {
    /// Abort on the admin queue: asks the named queue to abort the command.
    pub(crate) fn abort(&self, ctrl: &Ctrl, a: &Abort) -> Completion {
        let queue = lock(&ctrl.queues).get(&a.sqid).and_then(|w| w.upgrade());
        match queue {
            Some(q) if q.request(a.cid) => {
                tracing::debug!(sqid = a.sqid, cid = a.cid, "command aborted");
                Completion::success()
            }
            _ => Completion::ok(NOT_ABORTED),
        }
    }

    /// On the I/O queue: completes the aborted commands that are still queued for an R2T.
    /// (Those whose R2T went out complete when their data arrives, in [`crate::r2t`].)
    pub(crate) fn take_aborts(&mut self) {
        let requested = self.aborts.requested();
        for cid in requested {
            // A read waiting for a device buffer has not started: it ends here.
            if let Some(i) = self
                .buffer_wait
                .iter()
                .position(|(s, _)| s.cid.get() == cid)
            {
                self.buffer_wait.remove(i);
                self.aborts.data_done(cid);
                self.complete(cid, Error::AbortRequested);
                continue;
            }
            let Some(i) = self.waiting.iter().position(|(s, _, _)| s.cid.get() == cid) else {
                continue;
            };
            self.waiting.remove(i);
            self.aborts.data_done(cid);
            self.port
                .metrics()
                .awaiting_data
                .fetch_sub(1, Ordering::Relaxed);
            self.complete(cid, Error::AbortRequested);
        }
    }

    /// Makes this connection's waiting commands abortable through its controller.
    pub(crate) fn publish_aborts(&self, ctrl: &Ctrl, qid: u16) {
        lock(&ctrl.queues).insert(qid, Arc::downgrade(&self.aborts));
    }
}
