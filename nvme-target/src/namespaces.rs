//! The namespaces of every subsystem. They may be added and removed while hosts are
//! connected (as SPDK's `nvmf_subsystem_add_ns` and nvmet's namespace enable do): this is
//! what every thread shares of each namespace, and the record of changes that each
//! controller's Changed Namespace List log (04h) and Namespace Attribute Changed notice come
//! from. Each thread's devices for a namespace are in its port views (see `port`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::cell::lock;
use crate::config::{NamespaceConfig, SubsystemConfig};
use crate::locks::RangeLocks;
use crate::metrics::NamespaceMetrics;
use crate::resv::state::Reservations;

/// Entries of the Changed Namespace List log page; past it the log holds FFFFFFFFh alone.
pub const CHANGED_LIST_LEN: usize = 1024;

/// The shared state of one namespace.
#[derive(Debug)]
pub struct NsState {
    /// Its configuration.
    pub cfg: NamespaceConfig,
    /// Range locks (fused Compare and Write).
    pub(crate) locks: Arc<RangeLocks>,
    /// Registrants and the reservation.
    pub(crate) resv: Reservations,
    /// Counters.
    pub metrics: NamespaceMetrics,
}

impl NsState {
    fn new(cfg: NamespaceConfig) -> Self {
        Self {
            cfg,
            locks: Arc::default(),
            resv: Reservations::default(),
            metrics: NamespaceMetrics::default(),
        }
    }
}

/// Why a namespace could not be added or removed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NamespaceError {
    /// No subsystem has that NQN.
    #[error("no subsystem {0}")]
    UnknownSubsystem(String),
    /// The subsystem has no namespace with that ID.
    #[error("{nqn} has no namespace {nsid}")]
    UnknownNamespace {
        /// Subsystem NQN.
        nqn: String,
        /// Namespace ID.
        nsid: u32,
    },
    /// The ID is taken.
    #[error("{nqn} already has a namespace {nsid}")]
    Exists {
        /// Subsystem NQN.
        nqn: String,
        /// Namespace ID.
        nsid: u32,
    },
    /// The ID is out of the range the controllers report (NN).
    #[error("nsid {nsid} is not between 1 and {max} (the controllers' NN)")]
    BadNsid {
        /// Namespace ID.
        nsid: u32,
        /// The largest valid ID.
        max: u32,
    },
    /// The subsystem is full.
    #[error("{0} has the most namespaces a subsystem may have ({max})", max = crate::ana::MAX_NAMESPACES)]
    Full(String),
    /// The namespace names an ANA group the target does not have.
    #[error("no ANA group {0}")]
    UnknownAnaGroup(u32),
}

/// What a controller missed of a subsystem's namespace changes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Missed {
    /// These namespace IDs changed (oldest first, repeats possible).
    Ids(Vec<u32>),
    /// More than the change record keeps.
    TooMany,
}

#[derive(Debug, Default)]
struct Table {
    /// The subsystem in this slot (`None`: a free slot).
    nqn: Option<String>,
    list: Vec<Arc<NsState>>,
    /// Changes so far.
    generation: u64,
    /// `(generation, nsid)` of the latest changes, oldest first.
    changes: VecDeque<(u64, u32)>,
}

/// The namespaces of every subsystem, by subsystem index (see [`crate::subsystems`]; the
/// discovery subsystem has none).
#[derive(Debug)]
pub(crate) struct Namespaces {
    tables: Vec<Mutex<Table>>,
    /// Each table's generation, read without its lock by every admin queue turn.
    generations: Vec<AtomicU64>,
    /// Counts every change of any subsystem: admin queues watch it.
    changed: watch::Sender<u64>,
    max_nsid: u32,
}

impl Namespaces {
    /// The namespaces of `subsystems` as configured; IDs up to `max_nsid` are valid.
    pub fn new(subsystems: &[SubsystemConfig], max_nsid: u32) -> Self {
        let slots = crate::subsystems::MAX_SUBSYSTEMS;
        Self {
            tables: (0..slots)
                .map(|i| {
                    Mutex::new(subsystems.get(i).map_or_else(Table::default, |s| {
                        Table {
                            nqn: Some(s.nqn.clone()),
                            list: s
                                .namespaces
                                .iter()
                                .map(|n| Arc::new(NsState::new(n.clone())))
                                .collect(),
                            ..Table::default()
                        }
                    }))
                })
                .collect(),
            generations: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            changed: watch::channel(0).0,
            max_nsid,
        }
    }

    /// The largest valid namespace ID (Identify Controller NN).
    pub fn max_nsid(&self) -> u32 {
        self.max_nsid
    }

    /// The index of the subsystem named `nqn` (live or being added).
    pub fn subsystem(&self, nqn: &str) -> Result<usize, NamespaceError> {
        self.tables
            .iter()
            .position(|t| lock(t).nqn.as_deref() == Some(nqn))
            .ok_or_else(|| NamespaceError::UnknownSubsystem(nqn.to_owned()))
    }

    /// Gives slot `index` to a new subsystem `nqn` with `namespaces`.
    pub fn open(&self, index: usize, nqn: &str, namespaces: &[NamespaceConfig]) {
        if let Some(t) = self.tables.get(index) {
            let mut t = lock(t);
            t.nqn = Some(nqn.to_owned());
            t.list = namespaces
                .iter()
                .map(|n| Arc::new(NsState::new(n.clone())))
                .collect();
        }
    }

    /// Empties slot `index` (its subsystem is gone).
    pub fn close(&self, index: usize) {
        if let Some(t) = self.tables.get(index) {
            let mut t = lock(t);
            t.nqn = None;
            t.list.clear();
        }
    }

    /// The namespaces of subsystem `subsys`, in the order they were added.
    pub fn list(&self, subsys: usize) -> Vec<Arc<NsState>> {
        self.tables
            .get(subsys)
            .map(|t| lock(t).list.clone())
            .unwrap_or_default()
    }

    /// Namespace `nsid` of subsystem `subsys`.
    pub fn get(&self, subsys: usize, nsid: u32) -> Option<Arc<NsState>> {
        let t = lock(self.tables.get(subsys)?);
        t.list.iter().find(|n| n.cfg.nsid == nsid).cloned()
    }

    /// Adds a namespace to subsystem `subsys`. Hosts learn of it once it is announced.
    pub fn insert(
        &self,
        subsys: usize,
        cfg: NamespaceConfig,
    ) -> Result<Arc<NsState>, NamespaceError> {
        let t = self
            .tables
            .get(subsys)
            .ok_or_else(|| NamespaceError::UnknownSubsystem(format!("#{subsys}")))?;
        if cfg.nsid == 0 || cfg.nsid > self.max_nsid {
            return Err(NamespaceError::BadNsid {
                nsid: cfg.nsid,
                max: self.max_nsid,
            });
        }
        let mut t = lock(t);
        let nqn = t.nqn.clone().unwrap_or_default();
        if t.list.iter().any(|n| n.cfg.nsid == cfg.nsid) {
            return Err(NamespaceError::Exists {
                nqn,
                nsid: cfg.nsid,
            });
        }
        if t.list.len() >= crate::ana::MAX_NAMESPACES as usize {
            return Err(NamespaceError::Full(nqn));
        }
        let ns = Arc::new(NsState::new(cfg));
        t.list.push(Arc::clone(&ns));
        Ok(ns)
    }

    /// Takes namespace `nsid` out of subsystem `subsys`.
    pub fn remove(&self, subsys: usize, nsid: u32) -> Result<Arc<NsState>, NamespaceError> {
        let Some(t) = self.tables.get(subsys) else {
            return Err(NamespaceError::UnknownSubsystem(format!("#{subsys}")));
        };
        let mut t = lock(t);
        let missing = || NamespaceError::UnknownNamespace {
            nqn: t.nqn.clone().unwrap_or_default(),
            nsid,
        };
        let at = t
            .list
            .iter()
            .position(|n| n.cfg.nsid == nsid)
            .ok_or_else(missing)?;
        Ok(t.list.remove(at))
    }

    /// Records that namespace `nsid` of subsystem `subsys` changed (was added or removed)
    /// and wakes the admin queues, which owe their hosts a notice.
    pub fn announce(&self, subsys: usize, nsid: u32) {
        let Some(t) = self.tables.get(subsys) else {
            return;
        };
        {
            let mut t = lock(t);
            t.generation += 1;
            let g = t.generation;
            if t.changes.len() == CHANGED_LIST_LEN {
                t.changes.pop_front();
            }
            t.changes.push_back((g, nsid));
            self.generations[subsys].store(g, Ordering::Release);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// The change count of subsystem `subsys`.
    pub fn generation(&self, subsys: usize) -> u64 {
        self.generations
            .get(subsys)
            .map_or(0, |g| g.load(Ordering::Acquire))
    }

    /// The changes of subsystem `subsys` after change count `seen`, and the count now.
    pub fn changes_since(&self, subsys: usize, seen: u64) -> (u64, Missed) {
        let Some(t) = self.tables.get(subsys) else {
            return (seen, Missed::Ids(Vec::new()));
        };
        let t = lock(t);
        let oldest = t.changes.front().map_or(t.generation + 1, |c| c.0);
        let missed = if seen + 1 < oldest {
            Missed::TooMany
        } else {
            Missed::Ids(
                t.changes
                    .iter()
                    .filter(|c| c.0 > seen)
                    .map(|c| c.1)
                    .collect(),
            )
        };
        (t.generation, missed)
    }

    /// Watches for changes of any subsystem.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(nsid: u32) -> NamespaceConfig {
        NamespaceConfig {
            nsid,
            nguid: [0; 16],
            uuid: [0; 16],
            block_size: 512,
            num_blocks: 8,
            optimal_io_boundary: 0,
            volatile_write_cache: true,
            ana_group: 1,
        }
    }

    fn table() -> Namespaces {
        table_up_to(256)
    }

    fn table_up_to(max_nsid: u32) -> Namespaces {
        let s = SubsystemConfig {
            nqn: "nqn.a:b".into(),
            serial: "s".into(),
            model: "m".into(),
            allow_any_host: true,
            allowed_hosts: Vec::new(),
            namespaces: vec![ns(1)],
        };
        Namespaces::new(&[s], max_nsid)
    }

    #[test]
    fn namespaces_are_added_and_removed_by_id() {
        let t = table();
        assert_eq!(t.subsystem("nqn.a:b"), Ok(0));
        assert!(t.subsystem("nqn.a:c").is_err());
        assert!(matches!(
            t.insert(0, ns(1)),
            Err(NamespaceError::Exists { nsid: 1, .. })
        ));
        assert!(matches!(
            t.insert(0, ns(0)),
            Err(NamespaceError::BadNsid { .. })
        ));
        assert!(matches!(
            t.insert(0, ns(257)),
            Err(NamespaceError::BadNsid { max: 256, .. })
        ));
        t.insert(0, ns(7)).unwrap();
        assert!(t.get(0, 7).is_some());
        let ids: Vec<u32> = t.list(0).iter().map(|n| n.cfg.nsid).collect();
        assert_eq!(ids, [1, 7]);
        assert_eq!(t.remove(0, 1).unwrap().cfg.nsid, 1);
        assert!(matches!(
            t.remove(0, 1),
            Err(NamespaceError::UnknownNamespace { nsid: 1, .. })
        ));
        assert!(t.get(0, 1).is_none());
    }

    #[test]
    fn a_subsystem_is_full_at_mnan() {
        let t = table_up_to(4096);
        for nsid in 2..=crate::ana::MAX_NAMESPACES {
            t.insert(0, ns(nsid)).unwrap();
        }
        assert_eq!(
            t.insert(0, ns(300)).unwrap_err(),
            NamespaceError::Full("nqn.a:b".into())
        );
        t.remove(0, 5).unwrap();
        t.insert(0, ns(300)).unwrap();
        assert!(matches!(t.insert(0, ns(5)), Err(NamespaceError::Full(_))));
    }

    #[test]
    fn changes_are_kept_up_to_the_log_length() {
        let t = table();
        let mut rx = t.subscribe();
        assert_eq!(t.changes_since(0, 0), (0, Missed::Ids(Vec::new())));
        t.announce(0, 3);
        t.announce(0, 4);
        assert!(rx.has_changed().unwrap());
        assert_eq!(t.generation(0), 2);
        assert_eq!(t.changes_since(0, 0), (2, Missed::Ids(vec![3, 4])));
        assert_eq!(t.changes_since(0, 1), (2, Missed::Ids(vec![4])));
        assert_eq!(t.changes_since(0, 2), (2, Missed::Ids(Vec::new())));
        for i in 0..u32::try_from(CHANGED_LIST_LEN).unwrap() {
            t.announce(0, 10 + i);
        }
        assert_eq!(t.changes_since(0, 0).1, Missed::TooMany);
        // The record still reaches back to change 3.
        let (now, Missed::Ids(ids)) = t.changes_since(0, 2) else {
            panic!("the record keeps the last {CHANGED_LIST_LEN} changes");
        };
        assert_eq!(now, 2 + CHANGED_LIST_LEN as u64);
        assert_eq!(ids.len(), CHANGED_LIST_LEN);
        rx.mark_unchanged();
    }
}
