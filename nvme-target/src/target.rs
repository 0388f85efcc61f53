//! The target shared by every port: configuration, controller registry and counters.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use std::sync::Arc;

use crate::config::{ConfigError, NamespaceConfig, TargetConfig};
use crate::metrics::{PortMetrics, SubsystemMetrics, TargetMetrics};
use crate::namespaces::{NamespaceError, Namespaces, NsState};
use crate::resv::notices::NoticeBoard;
use crate::subsystems::{MAX_SUBSYSTEMS, SubsystemError, SubsystemInfo, Subsystems};

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
    /// Per subsystem (those configured first, then those added, in slot order).
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
    /// The subsystems there are now.
    subsystems: Subsystems,
    /// Every subsystem's namespaces, as every thread shares them.
    namespaces: Namespaces,
    /// Controllers that receive reservation notices.
    notices: NoticeBoard,
    /// Live I/O queues per controller thread, over every port: where new ones go.
    queue_load: Arc<crate::group::QueueLoad>,
}

/// Largest dynamic controller ID (FFF0h and up are reserved).
const MAX_CNTLID: u16 = 0xffef;

impl Target {
    /// Builds a target from a validated configuration.
    pub fn new(cfg: TargetConfig) -> Result<Arc<Self>, ConfigError> {
        cfg.validate()?;
        if cfg.subsystems.len() > MAX_SUBSYSTEMS {
            return Err(ConfigError::Limit(format!(
                "more than {MAX_SUBSYSTEMS} subsystems"
            )));
        }
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
            subsystems: (0..MAX_SUBSYSTEMS)
                .map(|_| SubsystemMetrics::default())
                .collect(),
        };
        let registry = Registry {
            next_cntlid: vec![1; MAX_SUBSYSTEMS + 1],
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
        let subsystems = Subsystems::new(&cfg.subsystems);
        Ok(Arc::new(Self {
            cfg,
            ana,
            access,
            metrics,
            registry: Mutex::new(registry),
            subsystems,
            namespaces,
            notices: NoticeBoard::default(),
            queue_load: Arc::default(),
        }))
    }

    /// Every subsystem's namespaces.
    pub(crate) fn namespaces(&self) -> &Namespaces {
        &self.namespaces
    }

    /// The subsystems there are now.
    pub(crate) fn subsystems(&self) -> &Subsystems {
        &self.subsystems
    }

    /// The counters of subsystem `nqn`.
    pub fn subsystem_metrics(&self, nqn: &str) -> Option<&SubsystemMetrics> {
        let i = self.subsystems.position(nqn)?;
        self.metrics.subsystems.get(i)
    }

    /// Adds subsystem `s` (with its namespaces and allowed hosts) while hosts are
    /// connected. It is pending (no host can connect to or discover it) until
    /// [`Target::publish_subsystem`], once every thread's port views have its namespaces'
    /// devices ([`crate::Port::attach_namespace`]); [`Target::remove_subsystem`] gives it up.
    pub fn add_subsystem(&self, s: &crate::config::SubsystemConfig) -> Result<(), SubsystemError> {
        let mut check = TargetConfig::new(vec![s.clone()], Vec::new());
        check.max_transfer = self.cfg.max_transfer;
        check
            .validate()
            .map_err(|e| SubsystemError::Invalid(e.to_string()))?;
        if let Some(n) = s.namespaces.iter().find(|n| {
            n.nsid > self.namespaces.max_nsid() || self.ana.group_index(n.ana_group).is_none()
        }) {
            return Err(SubsystemError::Invalid(format!(
                "namespace {}: nsid past {} or no ANA group {}",
                n.nsid,
                self.namespaces.max_nsid(),
                n.ana_group
            )));
        }
        let index = self.subsystems.reserve(SubsystemInfo::of(s), |i| {
            self.lock().controllers.iter().any(|(si, _)| *si == i)
        })?;
        if let Err(e) = self.access.open(index, s) {
            self.subsystems.release(index);
            return Err(SubsystemError::Invalid(e.to_string()));
        }
        self.namespaces.open(index, &s.nqn, &s.namespaces);
        let m = &self.metrics.subsystems[index];
        m.refused_hosts.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Lets hosts connect to and discover subsystem `nqn`, added with
    /// [`Target::add_subsystem`]; discovery controllers that asked hear of it.
    pub fn publish_subsystem(&self, nqn: &str) -> Result<(), SubsystemError> {
        let i = self
            .subsystems
            .find(nqn)
            .ok_or_else(|| SubsystemError::Unknown(nqn.to_owned()))?;
        self.subsystems.publish(i);
        tracing::info!(subsystem = nqn, "subsystem added");
        Ok(())
    }

    /// Removes subsystem `nqn`: new Connects to it are refused, its controllers are torn
    /// down (their connections close; commands at the devices finish), and discovery logs
    /// drop it. Returns its index, by which each thread's port views let go of its
    /// namespaces ([`crate::Port::detach_subsystem`]).
    pub fn remove_subsystem(&self, nqn: &str) -> Result<usize, SubsystemError> {
        let i = self
            .subsystems
            .find(nqn)
            .ok_or_else(|| SubsystemError::Unknown(nqn.to_owned()))?;
        self.access.close(i);
        self.namespaces.close(i);
        self.subsystems.release(i);
        for c in self.notices.controllers(i) {
            c.kill();
        }
        tracing::info!(subsystem = nqn, "subsystem removed");
        Ok(i)
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

    /// Live I/O queues per controller thread, over every port.
    pub(crate) fn queue_load(&self) -> &Arc<crate::group::QueueLoad> {
        &self.queue_load
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
        MAX_SUBSYSTEMS
    }

    /// Discovery log generation counter: it moves whenever some host's discovery log may
    /// have changed (a subsystem's allowed hosts).
    pub(crate) fn genctr(&self) -> u64 {
        1 + self.access.changes() + self.subsystems.changes()
    }

    /// Connected controllers per subsystem.
    pub fn status(&self) -> TargetStatus {
        let live = self.subsystems.live();
        let reg = self.lock();
        let subsystems = live
            .into_iter()
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
        let nqn = self.subsystems.get(subsys).map_or_else(
            || nvme_spec::fabrics::DISCOVERY_NQN.to_owned(),
            |s| s.nqn.clone(),
        );
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
