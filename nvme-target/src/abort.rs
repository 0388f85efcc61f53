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
//!
//! Reservation Acquire with Preempt and Abort reaches the same boxes through the controllers
//! of the preempted hosts ([`crate::resv::notices::NoticeBoard::preempt_abort`]): every
//! waiting command of the namespace completes the same way, with Command Aborted due to
//! Preempt and Abort.

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
/// queue (or a reservation command on any queue) may be served by another thread, so both
/// lists sit under one lock (taken only by commands that wait for an R2T or a buffer, by
/// Abort and by Preempt and Abort): an abort is granted only for a command that is waiting
/// at that moment.
#[derive(Debug, Default)]
pub(crate) struct AbortBox {
    lists: Mutex<Lists>,
    /// Wakes the queue's connection when an abort is requested.
    pub wake: Notify,
}

#[derive(Debug, Default)]
struct Lists {
    /// Commands waiting for host data (an R2T queued or sent) or a buffer: command ID and
    /// namespace ID (0 for commands of no namespace).
    awaiting: Vec<(u16, u32)>,
    /// Command IDs an abort was asked for, not yet completed, with how each completes.
    requested: Vec<(u16, Error)>,
}

impl Lists {
    fn is_requested(&self, cid: u16) -> bool {
        self.requested.iter().any(|&(c, _)| c == cid)
    }
}

impl AbortBox {
    /// Records that command `cid` of namespace `nsid` waits for its data.
    pub fn waiting_for_data(&self, cid: u16, nsid: u32) {
        lock(&self.lists).awaiting.push((cid, nsid));
    }

    /// Records that command `cid` no longer waits; returns how it completes if an abort was
    /// asked for it.
    pub fn data_done(&self, cid: u16) -> Option<Error> {
        let mut l = lock(&self.lists);
        l.awaiting.retain(|&(c, _)| c != cid);
        let i = l.requested.iter().position(|&(c, _)| c == cid)?;
        Some(l.requested.swap_remove(i).1)
    }

    /// Forgets every command (the queue is going away).
    pub fn clear(&self) {
        let mut l = lock(&self.lists);
        l.awaiting.clear();
        l.requested.clear();
    }

    /// The commands an abort was asked for, with how each completes.
    fn requested(&self) -> Vec<(u16, Error)> {
        lock(&self.lists).requested.clone()
    }

    /// Asks for command `cid` to be aborted; false if it is not waiting for data.
    fn request(&self, cid: u16) -> bool {
        let mut l = lock(&self.lists);
        if !l.awaiting.iter().any(|&(c, _)| c == cid) || l.is_requested(cid) {
            return false;
        }
        l.requested.push((cid, Error::AbortRequested));
        drop(l);
        self.wake.notify_one();
        true
    }

    /// Preempt and Abort: asks for every waiting command of namespace `nsid` to be aborted
    /// (Command Aborted due to Preempt and Abort); returns how many were.
    pub fn preempt(&self, nsid: u32) -> usize {
        let mut l = lock(&self.lists);
        let mut n = 0;
        for i in 0..l.awaiting.len() {
            let (cid, ns) = l.awaiting[i];
            if ns == nsid && !l.is_requested(cid) {
                l.requested.push((cid, Error::PreemptAborted));
                n += 1;
            }
        }
        drop(l);
        if n > 0 {
            self.wake.notify_one();
        }
        n
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

    /// On the I/O queue: completes the aborted commands (by Abort or by Preempt and Abort)
    /// that are still queued for an R2T or waiting for a buffer.
    /// (Those whose R2T went out complete when their data arrives, in [`crate::r2t`].)
    pub(crate) fn take_aborts(&mut self) {
        let requested = self.aborts.requested();
        for (cid, e) in requested {
            // A read waiting for a device buffer has not started: it ends here.
            if let Some(i) = self
                .buffer_wait
                .iter()
                .position(|(s, _)| s.cid.get() == cid)
            {
                self.buffer_wait.remove(i);
                self.aborts.data_done(cid);
                self.complete(cid, e);
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
            self.complete(cid, e);
        }
    }

    /// Makes this connection's waiting commands abortable through its controller.
    pub(crate) fn publish_aborts(&self, ctrl: &Ctrl, qid: u16) {
        lock(&ctrl.queues).insert(qid, Arc::downgrade(&self.aborts));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preempt_marks_the_namespaces_waiting_commands_once() {
        let b = AbortBox::default();
        b.waiting_for_data(1, 2);
        b.waiting_for_data(2, 2);
        b.waiting_for_data(3, 1);
        // An Abort came first for cid 1: it keeps its status.
        assert!(b.request(1));
        assert_eq!(b.preempt(2), 1);
        assert_eq!(b.preempt(2), 0, "already marked");
        assert!(!b.request(2), "already being aborted");
        assert_eq!(b.data_done(1), Some(Error::AbortRequested));
        assert_eq!(b.data_done(2), Some(Error::PreemptAborted));
        assert_eq!(b.data_done(3), None, "another namespace");
        // Done commands are forgotten: nothing is left to abort.
        assert_eq!(b.preempt(2), 0);
        assert!(b.requested().is_empty());
    }
}
