//! Asynchronous event notices of a controller (Base 5.2): what is owed to the host, and the
//! completion of its held Asynchronous Event Requests.
//!
//! A notice is owed when an event the host enabled (Set Features Asynchronous Event
//! Configuration) happens; it completes a held request at once, or the next request the host
//! sends. Once reported, notices of that kind are masked until the host reads the log page
//! the notice named without Retain Asynchronous Event (as nvmet does): the log shows the
//! latest state, so changes while masked need no notice of their own.

use std::sync::Mutex;

use nvme_spec::event::{self, config, kind, notice};
use nvme_spec::log::lid;
use tokio::sync::watch;

use crate::cell::lock;
use crate::completion::Completion;
use crate::conn::Conn;
use crate::ctrl::Ctrl;

/// One controller's asynchronous event state. Only its admin queue's connection touches it
/// (admin commands only), so a lock costs nothing on the I/O path.
#[derive(Debug, Default)]
pub struct Events(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    /// The port's ANA change count this controller has accounted for.
    ana_seen: u64,
    /// An ANA change notice waits for a request.
    ana_owed: bool,
    /// An ANA change notice was reported; the host has not read the ANA log since.
    ana_masked: bool,
}

impl Events {
    /// Starts from the port's current ANA change count: earlier changes are in the log the
    /// host reads when it connects.
    pub fn start(&self, ana_chgcnt: u64) {
        lock(&self.0).ana_seen = ana_chgcnt;
    }

    /// Records the port's ANA change count; owes a notice if it moved, the host enabled
    /// ANA change notices and none is already reported and unread.
    fn on_ana(&self, chgcnt: u64, aec: u32) {
        let mut st = lock(&self.0);
        if chgcnt <= st.ana_seen {
            return;
        }
        st.ana_seen = chgcnt;
        if aec & config::ANA_CHANGE != 0 && !st.ana_masked {
            st.ana_owed = true;
        }
    }

    /// The host read log page `lid`; without RAE that unmasks its notices.
    pub fn log_read(&self, log: u8, rae: bool) {
        if log == lid::ANA && !rae {
            lock(&self.0).ana_masked = false;
        }
    }

    /// Takes the next owed notice: the completion dword 0 of an event request.
    fn take(&self) -> Option<u32> {
        let mut st = lock(&self.0);
        if std::mem::take(&mut st.ana_owed) {
            st.ana_masked = true;
            return Some(event::result(kind::NOTICE, notice::ANA_CHANGE, lid::ANA));
        }
        None
    }
}

impl Conn {
    /// Looks at the shared state that raises events (the port's ANA change count) and
    /// completes held requests with what is owed. Only admin queues of I/O controllers
    /// have events.
    pub(crate) fn deliver_ana_events(&mut self) {
        let Some(ctrl) = self.event_ctrl() else {
            return;
        };
        let chgcnt = self.port.target.ana().port_chgcnt(self.port.index);
        ctrl.events.on_ana(chgcnt, ctrl.aec.get());
        loop {
            let cid = {
                let mut aers = lock(&ctrl.aers);
                if aers.is_empty() {
                    return;
                }
                let Some(result) = ctrl.events.take() else {
                    return;
                };
                (aers.remove(0), result)
            };
            self.complete(cid.0, Completion::ok(u64::from(cid.1)));
        }
    }

    /// The controller whose events this connection delivers: its admin queue's.
    fn event_ctrl(&self) -> Option<std::sync::Arc<Ctrl>> {
        let q = self.q.as_ref()?;
        let discovery = q.ctrl.subsys == self.port.target.discovery_index();
        (q.qid == 0 && !discovery).then(|| std::sync::Arc::clone(&q.ctrl))
    }

    /// Watches for events, once this connection is an I/O controller's admin queue.
    pub(crate) fn event_watch(&self) -> Option<watch::Receiver<u64>> {
        self.event_ctrl()
            .map(|_| self.port.target.ana().subscribe())
    }
}

/// Resolves when something that raises events changed (never without a watch).
pub(crate) async fn changed(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_is_owed_once_until_the_log_is_read() {
        let e = Events::default();
        e.start(2);
        e.on_ana(2, config::ANA_CHANGE);
        assert_eq!(e.take(), None);
        e.on_ana(3, config::ANA_CHANGE);
        assert_eq!(e.take(), Some(0x000c_0302));
        // Masked: the next change waits for the host to read the log.
        e.on_ana(4, config::ANA_CHANGE);
        assert_eq!(e.take(), None);
        e.log_read(lid::ANA, true);
        e.on_ana(5, config::ANA_CHANGE);
        assert_eq!(e.take(), None);
        e.log_read(lid::ANA, false);
        e.on_ana(6, config::ANA_CHANGE);
        assert_eq!(e.take(), Some(0x000c_0302));
    }

    #[test]
    fn disabled_notices_are_not_owed() {
        let e = Events::default();
        e.on_ana(1, config::NS_ATTR);
        assert_eq!(e.take(), None);
    }
}
