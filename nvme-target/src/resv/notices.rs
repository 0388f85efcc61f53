//! Reservation notifications: the Reservation Notification log page (80h) of each
//! controller, fed from whatever thread ran the reservation command, and the "Reservation
//! Log Page Available" asynchronous event that tells the host to read it.
//!
//! A controller's [`CtrlNotices`] is shared with the [`NoticeBoard`] of the target, which
//! finds the controllers of a host (by host identifier) in a subsystem. Posting a notice
//! queues a log entry (unless the controller masked that kind for the namespace, feature
//! 82h) and wakes the controller's admin queue, which completes a held Asynchronous Event
//! Request. One event is outstanding at a time: the next comes after the host has read the
//! log page (without RAE) and entries remain.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use nvme_spec::resv::{AEN_TYPE_IO_SPECIFIC, ResvNotificationLog};
use nvme_spec::{FromZeros, log::lid};
use tokio::sync::Notify;

use super::state::{HostId, Notice};
use crate::abort::AbortBox;
use crate::cell::lock;
use crate::ctrl::Ctrl;

/// Log entries a controller keeps; older ones are dropped (the count still tells the host
/// that it missed some).
const MAX_ENTRIES: usize = 255;

/// Notification mask bits (feature 82h, Base figure 336): Registration Preempted,
/// Reservation Released, Reservation Preempted.
pub(crate) const MASK_BITS: u32 = 0b1110;

#[derive(Debug, Default)]
struct Inner {
    log: VecDeque<ResvNotificationLog>,
    /// Log Page Count of the newest entry.
    count: u64,
    /// Masks per namespace ID.
    masks: Vec<(u32, u32)>,
    /// An event is due (entries arrived while none was outstanding).
    due: bool,
    /// An event was sent and the log has not been read since.
    outstanding: bool,
}

/// One controller's reservation notifications.
#[derive(Debug, Default)]
pub(crate) struct CtrlNotices {
    inner: Mutex<Inner>,
    /// Wakes the controller's admin queue when an event is due.
    pub wake: Notify,
}

impl CtrlNotices {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a notice of `kind` about namespace `nsid`, unless masked.
    pub fn post(&self, nsid: u32, kind: u8) {
        let mut g = self.lock();
        let mask = g
            .masks
            .iter()
            .find(|(n, _)| *n == nsid)
            .map_or(0, |(_, m)| *m);
        if mask & (1 << kind) != 0 {
            return;
        }
        // The count runs from 1 and skips 0 when it wraps (Base 5.16.1.25).
        g.count = g.count.checked_add(1).unwrap_or(1);
        let mut e = ResvNotificationLog::new_zeroed();
        e.count.set(g.count);
        e.kind = kind;
        e.nsid.set(nsid);
        if g.log.len() == MAX_ENTRIES {
            g.log.pop_front();
        }
        g.log.push_back(e);
        if !g.outstanding {
            g.due = true;
            drop(g);
            self.wake.notify_one();
        }
    }

    /// Takes the oldest entry for a Get Log Page (an empty page when there is none). Unless
    /// `rae`, the event is re-armed; whether one is due again is returned too.
    pub fn take(&self, rae: bool) -> (ResvNotificationLog, bool) {
        let mut g = self.lock();
        let mut e = g
            .log
            .pop_front()
            .unwrap_or_else(ResvNotificationLog::new_zeroed);
        e.available = u8::try_from(g.log.len()).unwrap_or(u8::MAX);
        if !rae {
            g.outstanding = false;
            if !g.log.is_empty() {
                g.due = true;
            }
        }
        (e, g.due)
    }

    /// The event's completion dword 0, if one is due now: it is then outstanding.
    pub fn take_event(&self) -> Option<u32> {
        let mut g = self.lock();
        if !g.due || g.outstanding {
            return None;
        }
        g.due = false;
        g.outstanding = true;
        // Type in bits 2:0, information 00h (Reservation Log Page Available) in 15:8, log
        // page in 23:16.
        Some(u32::from(AEN_TYPE_IO_SPECIFIC) | (u32::from(lid::RESV_NOTIFICATION) << 16))
    }

    /// Sets the mask of namespace `nsid` (every namespace in `all`).
    pub fn set_mask(&self, all: &[u32], nsid: u32, mask: u32) {
        let mut g = self.lock();
        let targets: Vec<u32> = if nsid == u32::MAX {
            all.to_vec()
        } else {
            vec![nsid]
        };
        for n in targets {
            match g.masks.iter_mut().find(|(k, _)| *k == n) {
                Some(e) => e.1 = mask & MASK_BITS,
                None => g.masks.push((n, mask & MASK_BITS)),
            }
        }
    }

    /// The mask of namespace `nsid`.
    pub fn mask(&self, nsid: u32) -> u32 {
        self.lock()
            .masks
            .iter()
            .find(|(n, _)| *n == nsid)
            .map_or(0, |(_, m)| *m)
    }
}

/// A controller that can receive notices: subsystem index, CNTLID, host identifier.
type Entry = (usize, u16, HostId, Weak<Ctrl>);

/// The target's controllers that can receive notices (and be told to abort for a Preempt
/// and Abort).
#[derive(Debug, Default)]
pub(crate) struct NoticeBoard {
    ctrls: Mutex<Vec<Entry>>,
}

impl NoticeBoard {
    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.ctrls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a controller (at its admin queue's Connect, its host identifier set).
    pub fn attach(&self, ctrl: &Arc<Ctrl>) {
        self.lock().push((
            ctrl.subsys,
            ctrl.cntlid,
            ctrl.hostid.get(),
            Arc::downgrade(ctrl),
        ));
    }

    /// The live controllers of subsystem `subsys`.
    pub fn controllers(&self, subsys: usize) -> Vec<Arc<Ctrl>> {
        self.lock()
            .iter()
            .filter(|(s, ..)| *s == subsys)
            .filter_map(|(.., c)| c.upgrade())
            .collect()
    }

    /// Forgets a controller.
    pub fn detach(&self, subsys: usize, cntlid: u16) {
        self.lock()
            .retain(|(s, c, _, _)| !(*s == subsys && *c == cntlid));
    }

    /// The live controllers of the subsystem, with their hosts (taken out of the lock, so
    /// what is done with them takes no lock inside this one).
    fn of_subsystem(&self, subsys: usize) -> Vec<(HostId, Arc<Ctrl>)> {
        self.lock()
            .iter()
            .filter(|(s, _, _, _)| *s == subsys)
            .filter_map(|(_, _, h, c)| Some((*h, c.upgrade()?)))
            .collect()
    }

    /// Posts each notice to every controller of its host in the subsystem.
    pub fn post(&self, subsys: usize, nsid: u32, notices: &[Notice]) {
        if notices.is_empty() {
            return;
        }
        let targets = self.of_subsystem(subsys);
        for (host, kind) in notices {
            for (h, c) in &targets {
                if h == host {
                    c.notices.post(nsid, *kind);
                }
            }
        }
    }

    /// Preempt and Abort: every I/O queue of every controller of the `preempted` hosts in
    /// the subsystem aborts its commands of namespace `nsid` that wait for data or a buffer
    /// (see [`crate::abort`]). Commands already at the device complete normally. Returns
    /// how many commands were asked to abort.
    pub fn preempt_abort(&self, subsys: usize, nsid: u32, preempted: &[HostId]) -> usize {
        if preempted.is_empty() {
            return 0;
        }
        let mut n = 0;
        for (h, c) in self.of_subsystem(subsys) {
            if !preempted.contains(&h) {
                continue;
            }
            let queues: Vec<Arc<AbortBox>> =
                lock(&c.queues).values().filter_map(Weak::upgrade).collect();
            n += queues.iter().map(|q| q.preempt(nsid)).sum::<usize>();
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::completion::Error;
    use nvme_spec::resv::notice;
    use std::time::Duration;

    #[test]
    fn one_event_at_a_time_rearmed_by_reading_the_log() {
        let n = CtrlNotices::default();
        assert_eq!(n.take_event(), None);
        n.post(1, notice::RESERVATION_RELEASED);
        n.post(1, notice::REGISTRATION_PREEMPTED);
        assert_eq!(n.take_event(), Some(0x0080_0006));
        assert_eq!(n.take_event(), None);
        // RAE keeps the event outstanding.
        let (e, due) = n.take(true);
        assert_eq!((e.count.get(), e.kind, e.available, due), (1, 2, 1, false));
        let (e, due) = n.take(false);
        assert_eq!((e.count.get(), e.kind, e.available, due), (2, 1, 0, false));
        let (e, _) = n.take(false);
        assert_eq!((e.count.get(), e.kind), (0, 0));
        n.post(1, notice::RESERVATION_PREEMPTED);
        assert!(n.take_event().is_some());
    }

    #[test]
    fn masked_kinds_are_not_logged() {
        let n = CtrlNotices::default();
        n.set_mask(&[1, 2], u32::MAX, 1 << notice::RESERVATION_RELEASED);
        assert_eq!(n.mask(2), 1 << 2);
        n.post(2, notice::RESERVATION_RELEASED);
        assert_eq!(n.take_event(), None);
        n.post(2, notice::RESERVATION_PREEMPTED);
        assert!(n.take_event().is_some());
    }

    fn ctrl(cntlid: u16, subsys: usize, host: u8) -> Arc<Ctrl> {
        let c = Ctrl::new(cntlid, subsys, String::new(), Duration::ZERO, 2, 0);
        c.hostid.set([host; 16]);
        c
    }

    #[test]
    fn the_board_reaches_every_controller_of_a_host() {
        let b = NoticeBoard::default();
        let (x, y, z) = (ctrl(1, 0, 1), ctrl(2, 0, 1), ctrl(3, 1, 1));
        for c in [&x, &y, &z] {
            b.attach(c);
        }
        b.post(0, 1, &[([1; 16], notice::REGISTRATION_PREEMPTED)]);
        assert!(x.notices.take_event().is_some() && y.notices.take_event().is_some());
        assert!(z.notices.take_event().is_none());
        b.detach(0, 1);
        b.post(0, 1, &[([1; 16], notice::REGISTRATION_PREEMPTED)]);
        assert_eq!(x.notices.take(false).0.count.get(), 1);
    }

    #[test]
    fn preempt_abort_reaches_the_queues_of_the_preempted_hosts_only() {
        let b = NoticeBoard::default();
        let (x, other_host, other_subsys) = (ctrl(1, 0, 1), ctrl(2, 0, 2), ctrl(3, 1, 1));
        let boxes: Vec<Arc<AbortBox>> = (0..3).map(|_| Arc::default()).collect();
        for (c, q) in [&x, &other_host, &other_subsys].into_iter().zip(&boxes) {
            b.attach(c);
            lock(&c.queues).insert(1, Arc::downgrade(q));
            // One command of namespace 2, one of namespace 1.
            q.waiting_for_data(7, 2);
            q.waiting_for_data(8, 1);
        }
        assert_eq!(b.preempt_abort(0, 2, &[[1; 16]]), 1);
        assert_eq!(boxes[0].data_done(7), Some(Error::PreemptAborted));
        assert_eq!(boxes[0].data_done(8), None, "another namespace");
        assert_eq!(boxes[1].data_done(7), None, "another host");
        assert_eq!(boxes[2].data_done(7), None, "another subsystem");
        assert_eq!(b.preempt_abort(0, 2, &[]), 0);
    }
}
