//! The target shared by every port: configuration, controller registry and counters.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use std::sync::Arc;

use crate::config::{ConfigError, NamespaceConfig, TargetConfig};
use crate::metrics::{PortMetrics, SubsystemMetrics, TargetMetrics};
use crate::namespaces::{NamespaceError, Namespaces, NsState};
use crate::resv::notices::NoticeBoard;

/// A connected controller (host association), as the admin status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerInfo {
    /// Subsystem NQN (the discovery NQN for discovery controllers).
    pub subsystem: String,
    /// Controller ID.
    pub cntlid: u16,
    /// Host NQN.
    pub hostnqn: String,
    /// Port ID the controller is connected through.
    pub port_id: u16,
    /// The host's address (its admin queue's TCP peer).
    pub host_address: Option<std::net::SocketAddr>,
    /// I/O queues connected.
    pub io_queues: u16,
}

/// Status of one subsystem.
#[derive(Clone, Debug)]
pub struct SubsystemStatus {
    /// NQN.
    pub nqn: String,
    /// Namespace IDs.
    pub namespaces: Vec<u32>,
    /// Connected controllers.
    pub controllers: Vec<ControllerInfo>,
}

/// Status of the whole target.
#[derive(Clone, Debug)]
pub struct TargetStatus {
    /// Per subsystem, in configuration order.
    pub subsystems: Vec<SubsystemStatus>,
    /// Discovery controllers connected now.
    pub discovery_controllers: usize,
}

#[derive(Debug, Default)]
struct Registry {
    /// Next CNTLID to try, per subsystem; the last entry is the discovery subsystem.
    next_cntlid: Vec<u16>,
    controllers: Vec<(usize, ControllerInfo)>,
}

/// The NVMe/TCP target: shared by all ports (threads).
#[derive(Debug)]
pub struct Target {
    cfg: TargetConfig,
    ana: crate::ana::Ana,
    access: crate::access::HostAccess,
    metrics: TargetMetrics,
    registry: Mutex<Registry>,
    /// Every subsystem's namespaces, as every thread shares them.
    namespaces: Namespaces,
    /// Controllers that receive reservation notices.
    notices: NoticeBoard,
}

/// Largest dynamic controller ID (FFF0h and up are reserved).
const MAX_CNTLID: u16 = 0xffef;

impl Target {
    /// Builds a target from a validated configuration.
    pub fn new(cfg: TargetConfig) -> Result<Arc<Self>, ConfigError> {
        cfg.validate()?;
        let ana = crate::ana::Ana::new(
            &cfg.ports.iter().map(|p| p.id).collect::<Vec<_>>(),
            cfg.subsystems
                .iter()
                .flat_map(|s| s.namespaces.iter().map(|n| n.ana_group))
                .chain(cfg.ana.iter().map(|a| a.group)),
            &cfg.ana,
        )?;
        let metrics = TargetMetrics {
            ports: (0..=cfg.ports.len())
                .map(|_| PortMetrics::default())
                .collect(),
            subsystems: cfg
                .subsystems
                .iter()
                .map(|_| SubsystemMetrics::default())
                .collect(),
        };
        let registry = Registry {
            next_cntlid: vec![1; cfg.subsystems.len() + 1],
            controllers: Vec::new(),
        };
        let access = crate::access::HostAccess::new(&cfg.subsystems);
        // NN: every configured ID, and at least room for MNAN namespaces added later.
        let max_nsid = cfg
            .subsystems
            .iter()
            .flat_map(|s| s.namespaces.iter().map(|n| n.nsid))
            .max()
            .unwrap_or(0)
            .max(crate::ana::MAX_NAMESPACES);
        let namespaces = Namespaces::new(&cfg.subsystems, max_nsid);
        Ok(Arc::new(Self {
            cfg,
            ana,
            access,
            metrics,
            registry: Mutex::new(registry),
            namespaces,
            notices: NoticeBoard::default(),
        }))
    }

    /// Every subsystem's namespaces.
    pub(crate) fn namespaces(&self) -> &Namespaces {
        &self.namespaces
    }

    /// The namespaces subsystem `nqn` has now.
    pub fn namespaces_of(&self, nqn: &str) -> Result<Vec<Arc<NsState>>, NamespaceError> {
        let s = self.namespaces.subsystem(nqn)?;
        Ok(self.namespaces.list(s))
    }

    /// Adds a namespace to subsystem `nqn` while hosts may be connected. Each thread's port
    /// views serve it once given its device ([`crate::Port::attach_namespace`]); hosts hear
    /// of it from [`Target::announce_namespace`].
    pub fn add_namespace(&self, nqn: &str, cfg: NamespaceConfig) -> Result<(), NamespaceError> {
        let s = self.namespaces.subsystem(nqn)?;
        if self.ana.group_index(cfg.ana_group).is_none() {
            return Err(NamespaceError::UnknownAnaGroup(cfg.ana_group));
        }
        self.namespaces.insert(s, cfg).map(drop)
    }

    /// Takes namespace `nsid` out of subsystem `nqn`: no port view finds it any more once
    /// each has detached it ([`crate::Port::detach_namespace`]); commands already at its
    /// devices finish. Hosts hear of it from [`Target::announce_namespace`].
    pub fn remove_namespace(
        &self,
        nqn: &str,
        nsid: u32,
    ) -> Result<NamespaceConfig, NamespaceError> {
        let s = self.namespaces.subsystem(nqn)?;
        Ok(self.namespaces.remove(s, nsid)?.cfg.clone())
    }

    /// Tells every controller of subsystem `nqn` that namespace `nsid` changed: a
    /// Namespace Attribute Changed notice (where the host enabled it) and an entry in its
    /// Changed Namespace List log.
    pub fn announce_namespace(&self, nqn: &str, nsid: u32) -> Result<(), NamespaceError> {
        let s = self.namespaces.subsystem(nqn)?;
        self.namespaces.announce(s, nsid);
        Ok(())
    }

    /// The controllers reservation notices go to.
    pub(crate) fn notices(&self) -> &NoticeBoard {
        &self.notices
    }

    /// The configuration.
    pub fn config(&self) -> &TargetConfig {
        &self.cfg
    }

    /// ANA groups and their states on every port.
    pub fn ana(&self) -> &crate::ana::Ana {
        &self.ana
    }

    /// The hosts each subsystem admits now.
    pub fn access(&self) -> &crate::access::HostAccess {
        &self.access
    }

    /// Counters.
    pub fn metrics(&self) -> &TargetMetrics {
        &self.metrics
    }

    /// Index of the discovery subsystem in per-subsystem tables.
    pub(crate) fn discovery_index(&self) -> usize {
        self.cfg.subsystems.len()
    }

    /// Discovery log generation counter: it moves whenever some host's discovery log may
    /// have changed (a subsystem's allowed hosts).
    pub(crate) fn genctr(&self) -> u64 {
        1 + self.access.changes()
    }

    /// Connected controllers per subsystem.
    pub fn status(&self) -> TargetStatus {
        let reg = self.lock();
        let subsystems = self
            .cfg
            .subsystems
            .iter()
            .enumerate()
            .map(|(i, s)| SubsystemStatus {
                nqn: s.nqn.clone(),
                namespaces: self.namespaces.list(i).iter().map(|n| n.cfg.nsid).collect(),
                controllers: reg
                    .controllers
                    .iter()
                    .filter(|(si, _)| *si == i)
                    .map(|(_, c)| c.clone())
                    .collect(),
            })
            .collect();
        let discovery_controllers = reg
            .controllers
            .iter()
            .filter(|(si, _)| *si == self.discovery_index())
            .count();
        TargetStatus {
            subsystems,
            discovery_controllers,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A poisoned registry still holds consistent data: every update is a single push,
        // retain or field store.
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Allocates a controller ID unique within the subsystem and records the association.
    pub(crate) fn register(
        &self,
        subsys: usize,
        hostnqn: &str,
        port_id: u16,
        host_address: Option<std::net::SocketAddr>,
    ) -> Option<u16> {
        let nqn = self
            .cfg
            .subsystems
            .get(subsys)
            .map_or(nvme_spec::fabrics::DISCOVERY_NQN, |s| s.nqn.as_str())
            .to_owned();
        let mut reg = self.lock();
        let Registry {
            next_cntlid,
            controllers,
        } = &mut *reg;
        let mut id = next_cntlid[subsys];
        for _ in 0..MAX_CNTLID {
            if !controllers
                .iter()
                .any(|(s, c)| *s == subsys && c.cntlid == id)
            {
                next_cntlid[subsys] = if id >= MAX_CNTLID { 1 } else { id + 1 };
                controllers.push((
                    subsys,
                    ControllerInfo {
                        subsystem: nqn,
                        cntlid: id,
                        hostnqn: hostnqn.to_owned(),
                        port_id,
                        host_address,
                        io_queues: 0,
                    },
                ));
                if let Some(m) = self.metrics.subsystems.get(subsys) {
                    m.controllers.fetch_add(1, Ordering::Relaxed);
                }
                return Some(id);
            }
            id = if id >= MAX_CNTLID { 1 } else { id + 1 };
        }
        None
    }

    /// The IDs of the subsystem's controllers, ascending.
    pub(crate) fn cntlids(&self, subsys: usize) -> Vec<u16> {
        let mut ids: Vec<u16> = self
            .lock()
            .controllers
            .iter()
            .filter(|(s, _)| *s == subsys)
            .map(|(_, c)| c.cntlid)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Forgets a controller.
    pub(crate) fn unregister(&self, subsys: usize, cntlid: u16) {
        self.notices.detach(subsys, cntlid);
        let mut reg = self.lock();
        let before = reg.controllers.len();
        reg.controllers
            .retain(|(s, c)| !(*s == subsys && c.cntlid == cntlid));
        if reg.controllers.len() != before {
            if let Some(m) = self.metrics.subsystems.get(subsys) {
                m.controllers.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Records the number of connected I/O queues of a controller.
    pub(crate) fn set_io_queues(&self, subsys: usize, cntlid: u16, n: u16) {
        let mut reg = self.lock();
        if let Some((_, c)) = reg
            .controllers
            .iter_mut()
            .find(|(s, c)| *s == subsys && c.cntlid == cntlid)
        {
            c.io_queues = n;
        }
    }
}
