//! Asynchronous event notices of a controller (Base 5.2): what is owed to the host, and the
//! completion of its held Asynchronous Event Requests.
//!
//! Three kinds come from here: ANA Change (a port's ANA state moved) and Namespace Attribute
//! Changed (a namespace was added to or removed from the subsystem; the IDs go to the
//! controller's Changed Namespace List log, 04h, kept whether or not the host enabled the
//! notice) for I/O controllers, and Discovery Log Page Change (the discovery log's
//! generation counter moved) for discovery controllers that stay connected (persistent
//! discovery controllers). A notice is owed when an event the host enabled (Set Features Asynchronous Event
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
use crate::namespaces::{CHANGED_LIST_LEN, Missed, Namespaces};

/// One controller's asynchronous event state. Only its admin queue's connection touches it
/// (admin commands only), so a lock costs nothing on the I/O path.
#[derive(Debug, Default)]
pub struct Events(Mutex<State>);

/// One kind of notice: the change count accounted for, whether a notice is owed, and whether
/// one was reported and its log not read since.
#[derive(Debug, Default)]
struct Notice {
    seen: u64,
    owed: bool,
    masked: bool,
}

impl Notice {
    /// Records change count `count`; true if it moved.
    fn moved(&mut self, count: u64) -> bool {
        if count <= self.seen {
            return false;
        }
        self.seen = count;
        true
    }

    /// A change happened: owed if the host enabled the notice and none is reported unread.
    fn changed(&mut self, enabled: bool) {
        if enabled && !self.masked {
            self.owed = true;
        }
    }

    /// Takes the owed notice; it stays masked until the log is read.
    fn take(&mut self) -> bool {
        let owed = std::mem::take(&mut self.owed);
        self.masked |= owed;
        owed
    }
}

#[derive(Debug, Default)]
struct State {
    /// ANA change, against the port's ANA change count.
    ana: Notice,
    /// Namespace Attribute Changed, against the subsystem's namespace change count.
    ns: Notice,
    /// Namespaces changed since the host last read log 04h, ascending.
    ns_changed: Vec<u32>,
    /// More namespaces changed than the log holds.
    ns_overflow: bool,
    /// Discovery Log Page Change (discovery controllers), against the log's generation.
    disc: Notice,
}

/// The Changed Namespace List log of a controller (Base 5.16.1.5).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChangedList {
    /// These IDs, ascending (at most [`CHANGED_LIST_LEN`]).
    Ids(Vec<u32>),
    /// More changed than the log holds: its first entry is FFFFFFFFh.
    Overflow,
}

impl Events {
    /// Starts from the port's current ANA change count and the subsystem's namespace change
    /// count: the host reads the state before them when it connects.
    pub fn start(&self, ana_chgcnt: u64, ns_generation: u64, genctr: u64) {
        let mut st = lock(&self.0);
        st.ana.seen = ana_chgcnt;
        st.ns.seen = ns_generation;
        st.disc.seen = genctr;
    }

    /// Records the discovery log's generation counter; owes a notice if it moved, the host
    /// enabled the notice and none is reported and unread.
    fn on_discovery(&self, genctr: u64, aec: u32) {
        let mut st = lock(&self.0);
        if st.disc.moved(genctr) {
            st.disc.changed(aec & config::DISCOVERY_CHANGE != 0);
        }
    }

    /// Records the port's ANA change count; owes a notice if it moved, the host enabled
    /// ANA change notices and none is already reported and unread.
    fn on_ana(&self, chgcnt: u64, aec: u32) {
        let mut st = lock(&self.0);
        if st.ana.moved(chgcnt) {
            st.ana.changed(aec & config::ANA_CHANGE != 0);
        }
    }

    /// Takes in the namespace changes of subsystem `subsys` the controller has not seen;
    /// owes a notice if there are any, the host enabled them and none is reported and
    /// unread.
    fn on_namespaces(&self, namespaces: &Namespaces, subsys: usize, aec: u32) {
        // One atomic load on every admin queue turn; the record's lock only on a change.
        let now = namespaces.generation(subsys);
        let mut st = lock(&self.0);
        if now <= st.ns.seen {
            return;
        }
        let (generation, missed) = namespaces.changes_since(subsys, st.ns.seen);
        st.ns.seen = generation;
        match missed {
            Missed::Ids(ids) => {
                for id in ids {
                    if let Err(at) = st.ns_changed.binary_search(&id) {
                        st.ns_changed.insert(at, id);
                    }
                }
                if st.ns_changed.len() > CHANGED_LIST_LEN {
                    st.ns_overflow = true;
                }
            }
            Missed::TooMany => st.ns_overflow = true,
        }
        if st.ns_overflow {
            st.ns_changed = Vec::new();
        }
        st.ns.changed(aec & config::NS_ATTR != 0);
    }

    /// Takes the Changed Namespace List (reading log 04h clears it, as nvmet does; RAE
    /// only keeps the notice masked).
    pub fn take_changed(&self) -> ChangedList {
        let mut st = lock(&self.0);
        let ids = std::mem::take(&mut st.ns_changed);
        if std::mem::take(&mut st.ns_overflow) {
            ChangedList::Overflow
        } else {
            ChangedList::Ids(ids)
        }
    }

    /// The host read log page `lid`; without RAE that unmasks its notices.
    pub fn log_read(&self, log: u8, rae: bool) {
        if rae {
            return;
        }
        let mut st = lock(&self.0);
        match log {
            lid::ANA => st.ana.masked = false,
            lid::CHANGED_NS => st.ns.masked = false,
            lid::DISCOVERY => st.disc.masked = false,
            _ => {}
        }
    }

    /// Takes the next owed notice: the completion dword 0 of an event request.
    fn take(&self) -> Option<u32> {
        let mut st = lock(&self.0);
        let (info, log) = if st.ana.take() {
            (notice::ANA_CHANGE, lid::ANA)
        } else if st.ns.take() {
            (notice::NS_ATTR_CHANGED, lid::CHANGED_NS)
        } else if st.disc.take() {
            (notice::DISCOVERY_CHANGE, lid::DISCOVERY)
        } else {
            return None;
        };
        Some(event::result(kind::NOTICE, info, log))
    }
}

/// What an admin queue watches for events: the ANA states, the namespaces and the hosts'
/// access (the discovery log).
#[derive(Debug)]
pub(crate) struct EventWatch {
    ana: watch::Receiver<u64>,
    namespaces: watch::Receiver<u64>,
    access: watch::Receiver<u64>,
    subsystems: watch::Receiver<u64>,
}

impl Conn {
    /// Looks at the shared state that raises events (for I/O controllers the port's ANA
    /// change count and the subsystem's namespace changes, for discovery controllers the
    /// discovery log's generation) and completes held requests with what is owed. Only
    /// admin queues have events.
    pub(crate) fn deliver_async_events(&mut self) {
        let Some(ctrl) = self.event_ctrl() else {
            return;
        };
        let target = &self.port.target;
        if ctrl.subsys == target.discovery_index() {
            ctrl.events.on_discovery(target.genctr(), ctrl.aec.get());
        } else {
            let chgcnt = target.ana().port_chgcnt(self.port.index);
            ctrl.events.on_ana(chgcnt, ctrl.aec.get());
            ctrl.events
                .on_namespaces(target.namespaces(), ctrl.subsys, ctrl.aec.get());
        }
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
        (q.qid == 0).then(|| std::sync::Arc::clone(&q.ctrl))
    }

    /// Watches for events, once this connection is an admin queue.
    pub(crate) fn event_watch(&self) -> Option<EventWatch> {
        let target = &self.port.target;
        self.event_ctrl().map(|_| EventWatch {
            ana: target.ana().subscribe(),
            namespaces: target.namespaces().subscribe(),
            access: target.access().subscribe(),
            subsystems: target.subsystems().subscribe(),
        })
    }
}

/// Resolves when something that raises events changed (never without a watch).
pub(crate) async fn changed(rx: &mut Option<EventWatch>) {
    let Some(w) = rx else {
        return std::future::pending().await;
    };
    // Both senders live as long as the target: an error means it is going away.
    let r = tokio::select! {
        r = w.ana.changed() => r,
        r = w.namespaces.changed() => r,
        r = w.access.changed() => r,
        r = w.subsystems.changed() => r,
    };
    if r.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_is_owed_once_until_the_log_is_read() {
        let e = Events::default();
        e.start(2, 0, 1);
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

    fn table() -> Namespaces {
        let s = crate::config::SubsystemConfig {
            nqn: "nqn.a:b".into(),
            serial: "s".into(),
            model: "m".into(),
            allow_any_host: true,
            allowed_hosts: Vec::new(),
            namespaces: Vec::new(),
        };
        Namespaces::new(&[s], 4096)
    }

    #[test]
    fn namespace_changes_fill_the_list_and_owe_one_notice() {
        let t = table();
        t.announce(0, 9);
        let e = Events::default();
        // Changes before the controller existed are not news to it.
        e.start(0, t.generation(0), 1);
        t.announce(0, 3);
        t.announce(0, 2);
        t.announce(0, 3);
        e.on_namespaces(&t, 0, config::NS_ATTR);
        assert_eq!(e.take(), Some(0x0004_0002));
        t.announce(0, 5);
        e.on_namespaces(&t, 0, config::NS_ATTR);
        assert_eq!(e.take(), None, "masked until log 04h is read");
        assert_eq!(e.take_changed(), ChangedList::Ids(vec![2, 3, 5]));
        e.log_read(lid::CHANGED_NS, false);
        assert_eq!(e.take_changed(), ChangedList::Ids(Vec::new()));
        t.announce(0, 7);
        e.on_namespaces(&t, 0, config::NS_ATTR);
        assert_eq!(e.take(), Some(0x0004_0002));
        assert_eq!(e.take_changed(), ChangedList::Ids(vec![7]));
    }

    #[test]
    fn more_changes_than_the_log_holds_overflow() {
        let t = table();
        let e = Events::default();
        for nsid in 1..=u32::try_from(CHANGED_LIST_LEN).unwrap() + 1 {
            t.announce(0, nsid);
        }
        // Without the notice enabled the list is still kept.
        e.on_namespaces(&t, 0, 0);
        assert_eq!(e.take(), None);
        assert_eq!(e.take_changed(), ChangedList::Overflow);
        t.announce(0, 1);
        e.on_namespaces(&t, 0, 0);
        assert_eq!(e.take_changed(), ChangedList::Ids(vec![1]));
    }

    #[test]
    fn a_discovery_log_change_is_noticed_until_the_log_is_read() {
        let e = Events::default();
        e.start(0, 0, 3);
        e.on_discovery(3, config::DISCOVERY_CHANGE);
        assert_eq!(e.take(), None);
        e.on_discovery(4, config::DISCOVERY_CHANGE);
        assert_eq!(e.take(), Some(0x0070_f002));
        e.on_discovery(5, config::DISCOVERY_CHANGE);
        assert_eq!(e.take(), None, "masked until the log is read");
        e.log_read(lid::DISCOVERY, false);
        e.on_discovery(6, config::DISCOVERY_CHANGE);
        assert_eq!(e.take(), Some(0x0070_f002));
        // Not enabled: nothing owed.
        let e = Events::default();
        e.on_discovery(9, config::ANA_CHANGE);
        assert_eq!(e.take(), None);
    }

    #[test]
    fn disabled_notices_are_not_owed() {
        let e = Events::default();
        e.on_ana(1, config::NS_ATTR);
        assert_eq!(e.take(), None);
    }
}
