//! The NVMe/TCP block service: the target built from the configuration, one port per
//! controller thread (every controller is a port of every subsystem) whose connections are
//! dealt over all controller threads (poll groups, `nvme_tcp.spread_queues`), and the
//! discovery controller. Namespaces can be added and removed while hosts are connected
//! ([`BlockService::add_namespace`], [`BlockService::remove_namespace`]).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bdev::{BlockIo, BufPool, PoolClass};
use nvme_target::{
    AnaSetting, NamespaceConfig, Port, PortConfig, PortGroup, SubsystemConfig, Target, TargetConfig,
};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{error, info};

use crate::config::Config;
use backplane::{Backplane, Volume};
use controller::{ControllerHandle, Controllers};

/// Why the block service could not start.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// A listener could not be bound.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The target's configuration is inconsistent.
    #[error("NVMe/TCP target")]
    Target(#[from] nvme_target::ConfigError),
    /// A host's authentication settings are unusable.
    #[error("{key}: {reason}")]
    Hosts {
        /// The configuration key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A controller thread could not start its port.
    #[error("controller {index}: {reason}")]
    Controller {
        /// The controller.
        index: usize,
        /// Why.
        reason: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BlockError {
    let what = what.into();
    move |source| BlockError::Io { what, source }
}

/// What one controller thread serves of the block service, for admin actions.
struct Local {
    /// The thread's index.
    index: usize,
    /// The position in `views` of the port whose listener this thread runs.
    own: usize,
    /// Every port view on this thread (its own, and the others' with spread queues).
    views: Vec<Rc<Port>>,
    /// The thread's I/O buffers, which namespaces added later move their data in.
    pool: BufPool,
}

thread_local! {
    /// This controller thread's part of the block service.
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// How long a run-time change waits for every controller thread to take it.
const CHANGE_DEADLINE: Duration = Duration::from_secs(10);

/// Why a run-time namespace change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// No subsystem or namespace of that name.
    #[error("{0}")]
    NotFound(String),
    /// The change would make the configuration invalid.
    #[error("{key}: {reason}")]
    Invalid {
        /// The configuration key it would break.
        key: String,
        /// Why.
        reason: String,
    },
    /// A controller thread could not carry it out.
    #[error("controller {index}: {reason}")]
    Controller {
        /// The controller.
        index: usize,
        /// Why.
        reason: String,
    },
}

/// The running block service.
#[derive(Debug)]
pub struct BlockService {
    target: Arc<Target>,
    ports: Vec<SocketAddr>,
    discovery: Option<SocketAddr>,
    backplane: Arc<Backplane>,
    controllers: Vec<ControllerHandle>,
    /// The configuration in force, with the namespaces changed at run time; its lock also
    /// keeps changes one at a time.
    config: Mutex<Config>,
}

impl BlockService {
    /// Binds every port, builds the target and starts serving on the controllers. Every
    /// port and the discovery controller accept through [`listener::Listener`] with the
    /// `limits` section's NVMe/TCP connection cap, under the process's descriptor `budget`.
    pub fn start(
        config: &Config,
        backplane: &Arc<Backplane>,
        controllers: &Controllers,
        shutdown: &watch::Sender<bool>,
        budget: &listener::Budget,
    ) -> Result<Self, BlockError> {
        let nvme = &config.nvme_tcp;
        let mut listeners = Vec::with_capacity(controllers.len());
        for i in 0..controllers.len() {
            let port = if nvme.base_port == 0 {
                0
            } else {
                nvme.base_port + u16::try_from(i).unwrap_or(u16::MAX)
            };
            let addr = SocketAddr::new(nvme.address, port);
            listeners.push(bind(addr).map_err(io_err(format!("NVMe/TCP listener {addr}")))?);
        }
        let ports: Vec<SocketAddr> = listeners
            .iter()
            .map(std::net::TcpListener::local_addr)
            .collect::<Result<_, _>>()
            .map_err(io_err("listener address"))?;
        let discovery_listener = match nvme.discovery_port {
            Some(p) => {
                let addr = SocketAddr::new(nvme.address, p);
                Some(bind(addr).map_err(io_err(format!("discovery listener {addr}")))?)
            }
            None => None,
        };
        let discovery = discovery_listener
            .as_ref()
            .map(std::net::TcpListener::local_addr)
            .transpose()
            .map_err(io_err("listener address"))?;

        let exported = exported_volumes(config, backplane);
        let target = Target::new(target_config(config, &exported, &ports, discovery)?)?;

        // One poll group per port. Spread, every controller thread serves every port (the
        // port's own thread accepts and deals); otherwise each port is its thread's alone.
        let groups: Vec<PortGroup> = (0..controllers.len()).map(|_| PortGroup::new()).collect();
        let spread = nvme.spread_queues;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for (h, listener) in controllers.handles().iter().zip(listeners) {
            let target = Arc::clone(&target);
            let groups: Vec<(u16, PortGroup)> = groups
                .iter()
                .enumerate()
                .filter(|&(i, _)| spread || i == h.index())
                .map(|(i, g)| (port_id(i), g.clone()))
                .collect();
            let exported = exported.clone();
            let shutdown = shutdown.subscribe();
            let ready = ready_tx.clone();
            let budget = budget.clone();
            let index = h.index();
            let classes = buffer_classes(config);
            h.run(move || {
                let views = Views {
                    own: port_id(index),
                    groups,
                };
                let result = start_port(
                    target, index, views, &exported, &classes, listener, budget, shutdown,
                );
                // start() waits for every answer; it is gone only if it already failed.
                let _ = ready.send(result.map_err(|e| BlockError::Controller {
                    index,
                    reason: e.to_string(),
                }));
            })
            .map_err(|e| BlockError::Controller {
                index: e.0,
                reason: "its thread has stopped".into(),
            })?;
        }
        drop(ready_tx);
        for result in ready_rx {
            result?;
        }
        if let Some(listener) = discovery_listener {
            let target = Arc::clone(&target);
            let shutdown = shutdown.subscribe();
            let budget = budget.clone();
            controllers.handles()[0]
                .run(move || {
                    tokio::task::spawn_local(async move {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(l) => {
                                let limit = target.config().limits.max_connections;
                                let l = listener::Listener::new(l, "nvme-discovery", limit, budget);
                                nvme_target::run_discovery(target, l, shutdown).await;
                            }
                            Err(e) => error!(error = %e, "discovery listener"),
                        }
                    });
                })
                .map_err(|e| BlockError::Controller {
                    index: e.0,
                    reason: "its thread has stopped".into(),
                })?;
        }
        info!(ports = ?ports, discovery = ?discovery, "NVMe/TCP block service");
        Ok(Self {
            target,
            ports,
            discovery,
            backplane: Arc::clone(backplane),
            controllers: controllers.handles().to_vec(),
            config: Mutex::new(config.clone()),
        })
    }

    /// The subsystems in force now (with the changes made at run time).
    pub fn subsystems(&self) -> Vec<crate::config::SubsystemConfig> {
        self.config_lock().subsystems.clone()
    }

    fn config_lock(&self) -> MutexGuard<'_, Config> {
        // Every change replaces the configuration whole, after it succeeded.
        self.config.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The subsystems now (configuration order, then those added at run time) with their
    /// namespaces, with the changes made at run time.
    pub fn namespaces(&self) -> Vec<(String, Vec<crate::config::NamespaceConfig>)> {
        self.config_lock()
            .subsystems
            .iter()
            .map(|s| (s.nqn.clone(), s.namespaces.clone()))
            .collect()
    }

    /// Adds namespace `ns` to subsystem `nqn` while hosts are connected: checked as the
    /// configuration would be (the volume exists and is not exported or the content store,
    /// the ID is free, the ANA group exists), opened on every controller thread, then
    /// announced to the subsystem's controllers (Namespace Attribute Changed, log 04h).
    /// Blocks until every controller thread has it (up to a deadline).
    pub fn add_namespace(
        &self,
        nqn: &str,
        ns: crate::config::NamespaceConfig,
    ) -> Result<(), ChangeError> {
        let mut config = self.config_lock();
        let mut next = config.clone();
        let Some(i) = next.subsystems.iter().position(|s| s.nqn == nqn) else {
            return Err(ChangeError::NotFound(format!("no subsystem {nqn}")));
        };
        let j = next.subsystems[i].namespaces.len();
        next.subsystems[i].namespaces.push(ns.clone());
        next.validate().map_err(|(key, reason)| {
            let key = key.replace(&format!("subsystems[{i}].namespaces[{j}]."), "");
            ChangeError::Invalid { key, reason }
        })?;
        let volume = self
            .backplane
            .volume(&ns.volume)
            .map(Arc::clone)
            .ok_or_else(|| ChangeError::Invalid {
                key: "volume".into(),
                reason: format!("unknown volume `{}`", ns.volume),
            })?;
        let cfg = namespace_config(nqn, ns.nsid, &volume, ns.ana_group);
        self.target
            .add_namespace(nqn, cfg)
            .map_err(|e| ChangeError::Invalid {
                key: "nsid".into(),
                reason: e.to_string(),
            })?;
        let (owned_nqn, nsid) = (nqn.to_owned(), ns.nsid);
        let attached = self.on_every_controller(move |local| {
            let dev = volume.open_io(local.index, &local.pool)?;
            for view in &local.views {
                view.attach_namespace(&owned_nqn, nsid, Rc::clone(&dev));
            }
            Ok(())
        });
        if let Err(e) = attached {
            // Nothing was announced: take it back from the threads that have it.
            let _ = self.target.remove_namespace(nqn, nsid);
            let owned_nqn = nqn.to_owned();
            let _ = self.on_every_controller(move |local| {
                for view in &local.views {
                    view.detach_namespace(&owned_nqn, nsid);
                }
                Ok(())
            });
            return Err(e);
        }
        // The subsystem exists: the target was built from this configuration.
        let _ = self.target.announce_namespace(nqn, nsid);
        info!(subsystem = nqn, nsid, volume = %ns.volume, "namespace added");
        *config = next;
        Ok(())
    }

    /// Removes namespace `nsid` from subsystem `nqn` while hosts are connected: new commands
    /// for it fail with Invalid Namespace at once, commands already at its devices finish,
    /// each controller thread flushes its device, then the subsystem's controllers are
    /// told (Namespace Attribute Changed, log 04h). Blocks until every controller thread
    /// is done (up to a deadline).
    pub fn remove_namespace(&self, nqn: &str, nsid: u32) -> Result<(), ChangeError> {
        let mut config = self.config_lock();
        let Some(s) = config.subsystems.iter_mut().find(|s| s.nqn == nqn) else {
            return Err(ChangeError::NotFound(format!("no subsystem {nqn}")));
        };
        let Some(at) = s.namespaces.iter().position(|n| n.nsid == nsid) else {
            return Err(ChangeError::NotFound(format!(
                "{nqn} has no namespace {nsid}"
            )));
        };
        self.target
            .remove_namespace(nqn, nsid)
            .map_err(|e| ChangeError::NotFound(e.to_string()))?;
        let removed = s.namespaces.remove(at);
        let owned_nqn = nqn.to_owned();
        let detached = self.on_every_controller(move |local| {
            let mut devs: Vec<Rc<dyn BlockIo>> = Vec::new();
            for view in &local.views {
                if let Some(d) = view.detach_namespace(&owned_nqn, nsid) {
                    if !devs.iter().any(|x| Rc::ptr_eq(x, &d)) {
                        devs.push(d);
                    }
                }
            }
            Ok(devs)
        });
        let _ = self.target.announce_namespace(nqn, nsid);
        info!(subsystem = nqn, nsid, volume = %removed.volume, "namespace removed");
        detached.map(drop)
    }

    /// Adds subsystem `sub` (with its allowed hosts and namespaces) while hosts are
    /// connected: checked as the configuration would be, its namespaces opened on every
    /// controller thread, then published (hosts may connect; discovery controllers that
    /// asked get a Discovery Log Page Change notice). Blocks until every controller thread
    /// has it (up to a deadline).
    pub fn add_subsystem(&self, sub: crate::config::SubsystemConfig) -> Result<(), ChangeError> {
        let mut config = self.config_lock();
        let mut next = config.clone();
        let i = next.subsystems.len();
        next.subsystems.push(sub.clone());
        next.validate()
            .map_err(|(key, reason)| ChangeError::Invalid {
                key: key.replace(&format!("subsystems[{i}]."), ""),
                reason,
            })?;
        let exported: Exported = sub
            .namespaces
            .iter()
            .filter_map(|n| {
                let v = self.backplane.volume(&n.volume)?;
                Some((sub.nqn.clone(), n.nsid, Arc::clone(v)))
            })
            .collect();
        self.target
            .add_subsystem(&subsystem_config(&sub, &exported))
            .map_err(|e| ChangeError::Invalid {
                key: "nqn".into(),
                reason: e.to_string(),
            })?;
        let nqn = sub.nqn.clone();
        let opened = {
            let exported = exported.clone();
            self.on_every_controller(move |local| {
                for (nqn, nsid, volume) in &exported {
                    let dev = volume.open_io(local.index, &local.pool)?;
                    for view in &local.views {
                        view.attach_namespace(nqn, *nsid, Rc::clone(&dev));
                    }
                }
                Ok(())
            })
        };
        if let Err(e) = opened {
            // Never published: no host saw it.
            if let Ok(index) = self.target.remove_subsystem(&nqn) {
                let _ = self.on_every_controller(move |local| {
                    Ok(local
                        .views
                        .iter()
                        .flat_map(|v| v.detach_subsystem(index))
                        .collect::<Vec<_>>())
                });
            }
            return Err(e);
        }
        // It was added just above, under the change lock.
        let _ = self.target.publish_subsystem(&nqn);
        info!(subsystem = %nqn, namespaces = exported.len(), "subsystem added");
        *config = next;
        Ok(())
    }

    /// Removes subsystem `nqn` while hosts are connected: its controllers are torn down
    /// (their connections close), new Connects are refused, discovery logs drop it (with a
    /// notice to discovery controllers that asked), and each controller thread flushes and
    /// closes its namespaces' devices. Blocks until every controller thread is done (up to a
    /// deadline).
    pub fn remove_subsystem(&self, nqn: &str) -> Result<(), ChangeError> {
        let mut config = self.config_lock();
        let Some(at) = config.subsystems.iter().position(|s| s.nqn == nqn) else {
            return Err(ChangeError::NotFound(format!("no subsystem {nqn}")));
        };
        let index = self
            .target
            .remove_subsystem(nqn)
            .map_err(|e| ChangeError::NotFound(e.to_string()))?;
        config.subsystems.remove(at);
        info!(subsystem = nqn, "subsystem removed");
        self.on_every_controller(move |local| {
            let mut devs: Vec<Rc<dyn BlockIo>> = Vec::new();
            for d in local.views.iter().flat_map(|v| v.detach_subsystem(index)) {
                if !devs.iter().any(|x| Rc::ptr_eq(x, &d)) {
                    devs.push(d);
                }
            }
            Ok(devs)
        })
    }

    /// Runs `job` on every controller thread with its part of the service (devices it
    /// returns are flushed there first) and waits for all of them, up to
    /// [`CHANGE_DEADLINE`].
    fn on_every_controller<T: FlushAfter + 'static>(
        &self,
        job: impl Fn(&Local) -> std::io::Result<T> + Send + Sync + 'static,
    ) -> Result<(), ChangeError> {
        let job = Arc::new(job);
        let (tx, rx) = std::sync::mpsc::channel();
        for h in &self.controllers {
            let (job, tx, index) = (Arc::clone(&job), tx.clone(), h.index());
            let sent = h.run(move || {
                let r = LOCAL.with(|l| match l.borrow().as_ref() {
                    Some(local) => job(local).map_err(|e| e.to_string()),
                    None => Err("serves no NVMe/TCP port".to_owned()),
                });
                match r {
                    Ok(t) => {
                        tokio::task::spawn_local(async move {
                            t.flush_after().await;
                            // The waiter may have given up: nothing to tell then.
                            let _ = tx.send((index, Ok(())));
                        });
                    }
                    Err(e) => {
                        let _ = tx.send((index, Err(e)));
                    }
                }
            });
            if let Err(e) = sent {
                return Err(ChangeError::Controller {
                    index: e.0,
                    reason: "its thread has stopped".into(),
                });
            }
        }
        drop(tx);
        let until = Instant::now() + CHANGE_DEADLINE;
        for _ in &self.controllers {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((_, Ok(()))) => {}
                Ok((index, Err(reason))) => return Err(ChangeError::Controller { index, reason }),
                Err(_) => {
                    return Err(ChangeError::Controller {
                        index: 0,
                        reason: format!("a controller did not answer within {CHANGE_DEADLINE:?}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// The target (status and counters).
    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    /// Each controller's NVMe/TCP address, by controller index.
    pub fn ports(&self) -> &[SocketAddr] {
        &self.ports
    }

    /// The discovery controller's address.
    pub fn discovery(&self) -> Option<SocketAddr> {
        self.discovery
    }
}

/// What a controller thread does after its part of a change, before it reports back.
trait FlushAfter {
    /// Done when the thread's part is complete.
    async fn flush_after(self);
}

impl FlushAfter for () {
    async fn flush_after(self) {}
}

/// Devices a thread stopped using: flushed (each has its own command deadlines).
impl FlushAfter for Vec<Rc<dyn BlockIo>> {
    async fn flush_after(self) {
        let cq = Rc::new(bdev::CompletionQueue::default());
        let sink: Rc<dyn bdev::Sink> = cq.clone();
        for (i, d) in self.iter().enumerate() {
            d.submit(bdev::Request::bare(bdev::Op::Flush, 0, 0, i as u64), &sink);
        }
        for _ in 0..self.len() {
            if let Err(e) = cq.next().await.result {
                tracing::warn!(error = %e, "flush of a removed namespace failed");
            }
        }
    }
}

/// Closes every NVMe/TCP connection of the calling controller thread's port.
pub fn drop_local_connections() -> bool {
    LOCAL.with(|l| match l.borrow().as_ref() {
        Some(local) => {
            local.views[local.own].drop_connections();
            true
        }
        None => false,
    })
}

/// `(subsystem NQN, nsid, volume)` for every exported namespace.
type Exported = Vec<(String, u32, Arc<Volume>)>;

fn exported_volumes(config: &Config, backplane: &Backplane) -> Exported {
    let mut out = Vec::new();
    for s in &config.subsystems {
        for ns in &s.namespaces {
            // Validation guarantees the volume exists.
            if let Some(v) = backplane.volume(&ns.volume) {
                out.push((s.nqn.clone(), ns.nsid, Arc::clone(v)));
            }
        }
    }
    out
}

/// The NVMe/TCP service's I/O buffers on each controller thread: small commands, the
/// common 128 KiB, and whole maximum transfers (a fixed amount: a host's commands wait for a
/// buffer rather than make the pool grow).
pub fn buffer_classes(config: &Config) -> Vec<PoolClass> {
    let mdts = usize::try_from(config.nvme_tcp.max_transfer.bytes()).unwrap_or(1 << 20);
    let mut classes = vec![
        PoolClass {
            size: 4096,
            count: 256,
        },
        PoolClass {
            size: (128 << 10).min(mdts),
            count: 128,
        },
    ];
    if mdts > 128 << 10 {
        classes.push(PoolClass {
            size: mdts,
            count: 16,
        });
    }
    classes
}

/// The port ID of controller `index`'s port.
fn port_id(index: usize) -> u16 {
    u16::try_from(index + 1).unwrap_or(u16::MAX)
}

/// The ports one controller thread serves: its own (with the listener) and, spread, the
/// others' (connections their listeners deal to it).
struct Views {
    own: u16,
    groups: Vec<(u16, PortGroup)>,
}

#[allow(clippy::too_many_arguments)]
fn start_port(
    target: Arc<Target>,
    index: usize,
    views: Views,
    exported: &Exported,
    classes: &[PoolClass],
    listener: std::net::TcpListener,
    budget: listener::Budget,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let pool = BufPool::new(classes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut devices: Vec<(String, u32, Rc<dyn BlockIo>)> = Vec::with_capacity(exported.len());
    for (nqn, nsid, volume) in exported {
        devices.push((nqn.clone(), *nsid, volume.open_io(index, &pool)?));
    }
    let limit = target.config().limits.max_connections;
    let mut listener = Some(listener::Listener::new(
        tokio::net::TcpListener::from_std(listener)?,
        "nvme-tcp",
        limit,
        budget,
    ));
    let mut ports = Vec::with_capacity(views.groups.len());
    for (id, group) in views.groups {
        let port = Port::new(
            Arc::clone(&target),
            id,
            &group,
            devices.clone(),
            pool.clone(),
        );
        ports.push((id == views.own, port));
    }
    let Some(own) = ports.iter().position(|(own, _)| *own) else {
        return Err(std::io::Error::other(
            "the controller's own port is missing",
        ));
    };
    LOCAL.with(|l| {
        *l.borrow_mut() = Some(Local {
            index,
            own,
            views: ports.iter().map(|(_, p)| Rc::clone(p)).collect(),
            pool,
        });
    });
    for (own, port) in ports {
        let listener = if own { listener.take() } else { None };
        let shutdown = shutdown.clone();
        tokio::task::spawn_local(async move {
            port.run(listener, shutdown).await;
            // The ports and their device handles go once every view has stopped: their
            // completion pollers end with them, so the controller thread can finish.
            LOCAL.with(|l| {
                let mut l = l.borrow_mut();
                if l.as_ref()
                    .is_some_and(|local| local.views.iter().all(|v| Rc::strong_count(v) == 1))
                {
                    l.take();
                }
            });
        });
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

fn target_config(
    config: &Config,
    exported: &Exported,
    ports: &[SocketAddr],
    discovery: Option<SocketAddr>,
) -> Result<TargetConfig, BlockError> {
    let nvme = &config.nvme_tcp;
    let subsystems = config
        .subsystems
        .iter()
        .map(|s| subsystem_config(s, exported))
        .collect();
    let ports = ports
        .iter()
        .enumerate()
        .map(|(i, &addr)| PortConfig {
            id: port_id(i),
            addr,
        })
        .collect();
    let mut cfg = TargetConfig::new(subsystems, ports);
    cfg.discovery = discovery;
    cfg.referrals = nvme
        .referrals
        .iter()
        .map(|r| SocketAddr::new(r.address, r.port))
        .collect();
    cfg.max_h2c_data = u32::try_from(nvme.max_h2c_data.bytes()).unwrap_or(u32::MAX);
    cfg.max_transfer = u32::try_from(nvme.max_transfer.bytes()).unwrap_or(u32::MAX);
    cfg.max_queue_entries = nvme.queue_entries;
    cfg.max_io_queues = nvme.io_queues;
    cfg.limits = config.limits.nvme_tcp();
    cfg.hosts = crate::config::hosts_auth(&nvme.hosts)
        .map_err(|(key, reason)| BlockError::Hosts { key, reason })?;
    cfg.ana = nvme
        .ana
        .iter()
        .map(|a| AnaSetting {
            port: u16::try_from(a.controller + 1).unwrap_or(u16::MAX),
            group: a.group,
            state: a.state.into(),
        })
        .collect();
    Ok(cfg)
}

/// The target's view of subsystem `s`, whose namespaces' volumes are in `exported`.
fn subsystem_config(s: &crate::config::SubsystemConfig, exported: &Exported) -> SubsystemConfig {
    SubsystemConfig {
        nqn: s.nqn.clone(),
        serial: s.serial.clone().unwrap_or_else(|| derived_serial(&s.nqn)),
        model: s.model.clone(),
        allow_any_host: s.allow_any_host,
        allowed_hosts: s.allowed_hosts.clone(),
        namespaces: exported
            .iter()
            .filter(|(nqn, ..)| *nqn == s.nqn)
            .map(|(nqn, nsid, v)| {
                let group = s
                    .namespaces
                    .iter()
                    .find(|n| n.nsid == *nsid)
                    .map_or(1, |n| n.ana_group);
                namespace_config(nqn, *nsid, v, group)
            })
            .collect(),
    }
}

fn namespace_config(nqn: &str, nsid: u32, v: &Volume, ana_group: u32) -> NamespaceConfig {
    NamespaceConfig {
        nsid,
        nguid: stable_id("nguid", nqn, nsid),
        uuid: uuid_v8(stable_id("uuid", nqn, nsid)),
        block_size: v.block_size(),
        num_blocks: v.size() / u64::from(v.block_size()),
        optimal_io_boundary: if v.members().len() > 1 {
            u32::try_from(v.stripe_size()).unwrap_or(0)
        } else {
            0
        },
        // File-backed devices go through the page cache (or a drive cache): Flush matters.
        volatile_write_cache: true,
        ana_group,
    }
}

/// A 16-byte ID that is the same on every restart and every controller, and differs
/// between namespaces and subsystems (hosts ignore duplicate NGUIDs).
fn stable_id(kind: &str, nqn: &str, nsid: u32) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"baton\0");
    h.update(kind.as_bytes());
    h.update(b"\0");
    h.update(nqn.as_bytes());
    h.update(b"\0");
    h.update(nsid.to_le_bytes());
    let digest = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// Marks a hash-derived ID as an RFC 9562 version 8 UUID.
fn uuid_v8(mut id: [u8; 16]) -> [u8; 16] {
    id[6] = (id[6] & 0x0f) | 0x80;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

fn derived_serial(nqn: &str) -> String {
    let digest = Sha256::digest(nqn.as_bytes());
    digest[..10].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = stable_id("nguid", "nqn.a", 1);
        assert_eq!(a, stable_id("nguid", "nqn.a", 1));
        assert_ne!(a, stable_id("nguid", "nqn.a", 2));
        assert_ne!(a, stable_id("nguid", "nqn.b", 1));
        assert_ne!(a, stable_id("uuid", "nqn.a", 1));
        let u = uuid_v8(a);
        assert_eq!(u[6] >> 4, 8);
        assert_eq!(u[8] >> 6, 0b10);
    }

    #[test]
    fn serial_fits_identify_field() {
        let s = derived_serial("nqn.2026-11.io.baton:vol0");
        assert_eq!(s.len(), 20);
        assert!(s.is_ascii());
    }
}
