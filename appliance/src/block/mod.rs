//! The NVMe/TCP block service: the target built from the configuration, one port per
//! controller thread (every controller is a port of every subsystem) whose connections are
//! dealt over all controller threads (poll groups, `nvme_tcp.spread_queues`), and the
//! discovery controller. Namespaces and subsystems can be added and removed while hosts are
//! connected (`changes`).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

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

mod changes;
pub use changes::ChangeError;

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
    #[error(transparent)]
    Controller(#[from] ControllerFailed),
}

/// A controller thread could not do its part (start its port, take a run-time change).
#[derive(Debug, thiserror::Error)]
#[error("controller {index}: {reason}")]
pub struct ControllerFailed {
    /// The controller.
    pub index: usize,
    /// Why.
    pub reason: String,
}

impl From<controller::ControllerGone> for ControllerFailed {
    fn from(e: controller::ControllerGone) -> Self {
        Self {
            index: e.0,
            reason: "its thread has stopped".into(),
        }
    }
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
                let _ = ready.send(result.map_err(|e| {
                    BlockError::from(ControllerFailed {
                        index,
                        reason: e.to_string(),
                    })
                }));
            })
            .map_err(ControllerFailed::from)?;
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
                .map_err(ControllerFailed::from)?;
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
