//! A port: one listener, reaching every subsystem, whose connections are served by the
//! controller threads of its poll group ([`crate::group`]).
//!
//! Every thread of the group holds a view of the port ([`Port`]: the namespaces' devices
//! opened on that thread, the thread's buffers); the view with the listener accepts, and
//! each view also serves the connections other members move to it after their Connect.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use bdev::{BlockIo, BufPool};

use crate::config::NamespaceConfig;
use crate::conn::Conn;
use crate::group::{GroupShared, Moving, PortGroup};
use crate::metrics::PortMetrics;
use crate::namespaces::NsState;
use crate::target::Target;

/// A namespace as a port sees it: its configuration, its device on this thread, and what
/// every thread shares of it.
pub(crate) struct PortNamespace {
    pub cfg: NamespaceConfig,
    pub dev: Rc<dyn BlockIo>,
    pub state: Arc<NsState>,
    /// Position of its ANA group in [`crate::ana::Ana::groups`].
    pub ana_group: usize,
}

impl PortNamespace {
    fn new(target: &Target, state: Arc<NsState>, dev: Rc<dyn BlockIo>) -> Rc<Self> {
        Rc::new(Self {
            cfg: state.cfg.clone(),
            dev,
            ana_group: target.ana().group_index(state.cfg.ana_group).unwrap_or(0),
            state,
        })
    }
}

/// Per subsystem, the namespaces a port view serves.
pub(crate) type NamespaceTable = Vec<Vec<Rc<PortNamespace>>>;

/// State shared by the connections of one port.
pub(crate) struct PortShared {
    pub target: Arc<Target>,
    /// Metrics index (position in the configuration; the discovery port is last).
    pub index: usize,
    pub port_id: u16,
    /// Serves only the discovery subsystem.
    pub discovery_only: bool,
    /// Per subsystem, its namespaces on this thread. Changed only between commands (by
    /// [`Port::attach_namespace`] and [`Port::detach_namespace`]); a command holds its
    /// namespace by reference count, so one removed meanwhile finishes what it started.
    pub namespaces: RefCell<NamespaceTable>,
    /// The controller thread's I/O buffers (device buffers for reads and writes).
    pub pool: BufPool,
    /// What this port's views on every thread share.
    pub group: Arc<GroupShared>,
    /// This view's place in the group.
    pub member: usize,
}

impl PortShared {
    pub fn metrics(&self) -> &PortMetrics {
        &self.target.metrics().ports[self.index]
    }

    /// The ANA state of a namespace's group on this port.
    pub fn ana_state(&self, ns: &PortNamespace) -> Option<crate::ana::AnaState> {
        self.target.ana().state(self.index, ns.ana_group)
    }

    /// The IDs of the namespaces of subsystem `subsys` this port serves.
    pub fn nsids(&self, subsys: usize) -> Vec<u32> {
        self.namespaces
            .borrow()
            .get(subsys)
            .into_iter()
            .flatten()
            .map(|n| n.cfg.nsid)
            .collect()
    }

    /// The namespaces of subsystem `subsys` this port serves.
    pub fn namespaces_of(&self, subsys: usize) -> Vec<Rc<PortNamespace>> {
        self.namespaces
            .borrow()
            .get(subsys)
            .cloned()
            .unwrap_or_default()
    }

    pub fn namespace(&self, subsys: usize, nsid: u32) -> Option<Rc<PortNamespace>> {
        self.namespaces
            .borrow()
            .get(subsys)?
            .iter()
            .find(|n| n.cfg.nsid == nsid)
            .cloned()
    }
}

/// One thread's view of an NVMe/TCP port (not `Send`).
pub struct Port {
    shared: Rc<PortShared>,
    /// Connections other members moved to this thread.
    inbox: RefCell<Option<mpsc::UnboundedReceiver<Box<Moving>>>>,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("port_id", &self.shared.port_id)
            .finish()
    }
}

impl Port {
    /// This thread's view of the port with ID `port_id` (one of the configured ports), a
    /// member of `group`, serving every subsystem with the given devices: `(subsystem NQN,
    /// nsid, device)` opened on this thread, whose data moves in buffers from `pool` (the
    /// thread's). Namespaces without a device here are not visible through this port. A
    /// port served by one thread alone has a group of its own.
    pub fn new(
        target: Arc<Target>,
        port_id: u16,
        group: &PortGroup,
        devices: Vec<(String, u32, Rc<dyn BlockIo>)>,
        pool: BufPool,
    ) -> Rc<Self> {
        let index = target
            .config()
            .ports
            .iter()
            .position(|p| p.id == port_id)
            .unwrap_or(target.config().ports.len());
        // Every slot, so subsystems added later have their place.
        let mut namespaces: NamespaceTable = vec![Vec::new(); crate::subsystems::MAX_SUBSYSTEMS];
        for (i, s) in target.subsystems().live() {
            namespaces[i] = target
                .namespaces()
                .list(i)
                .into_iter()
                .filter_map(|ns| {
                    devices
                        .iter()
                        .find(|(nqn, nsid, _)| *nqn == s.nqn && *nsid == ns.cfg.nsid)
                        .map(|(_, _, dev)| PortNamespace::new(&target, ns, Rc::clone(dev)))
                })
                .collect();
        }
        Self::build(target, index, port_id, false, group, namespaces, pool)
    }

    fn build(
        target: Arc<Target>,
        index: usize,
        port_id: u16,
        discovery_only: bool,
        group: &PortGroup,
        namespaces: NamespaceTable,
        pool: BufPool,
    ) -> Rc<Self> {
        let (member, rx) = group.shared.join();
        Rc::new(Self {
            shared: Rc::new(PortShared {
                target,
                index,
                port_id,
                discovery_only,
                namespaces: RefCell::new(namespaces),
                pool,
                group: Arc::clone(&group.shared),
                member,
            }),
            inbox: RefCell::new(Some(rx)),
        })
    }

    fn serve(
        &self,
        conns: &mut JoinSet<()>,
        conn: Conn,
        stream: tokio::net::TcpStream,
        slot: listener::Slot,
        shutdown: &watch::Receiver<bool>,
    ) {
        let drop_rx = self.shared.group.drop_tx.subscribe();
        conns.spawn_local(conn.serve(stream, slot, drop_rx, shutdown.clone()));
    }

    /// Serves a connection another member moved here.
    fn resume(&self, conns: &mut JoinSet<()>, m: Box<Moving>, shutdown: &watch::Receiver<bool>) {
        let m = *m;
        match tokio::net::TcpStream::from_std(m.stream) {
            Ok(s) => {
                let conn = Conn::resume(Rc::clone(&self.shared), m.carried);
                self.serve(conns, conn, s, m.slot, shutdown);
            }
            Err(e) => warn!(error = %e, "a connection moved here could not be served"),
        }
    }

    /// Serves connections until `shutdown` turns true: those accepted through `listener`
    /// (this view's, if it has one: its connection limit and the descriptor budget; a
    /// refused connection is just closed, NVMe/TCP has nothing to say before ICReq), and
    /// those other members move to this thread. Then lets
    /// every connection answer what it has received within the send timeout, fails commands
    /// still waiting for data, flushes the devices and returns. Must run inside a
    /// `LocalSet`.
    pub async fn run(
        self: Rc<Self>,
        mut listener: Option<listener::Listener>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut conns = JoinSet::new();
        let mut inbox = self.inbox.borrow_mut().take();
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                r = shutdown.changed() => if r.is_err() { break },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                a = accept(listener.as_mut()) => {
                    debug!(peer = %a.peer, port = self.shared.port_id, "connection");
                    self.shared.metrics().connections.fetch_add(1, Ordering::Relaxed);
                    let conn = Conn::new(Rc::clone(&self.shared));
                    self.serve(&mut conns, conn, a.stream, a.slot, &shutdown);
                }
                m = recv(inbox.as_mut()) => match m {
                    Some(m) => self.resume(&mut conns, m, &shutdown),
                    None => inbox = None,
                }
            }
        }
        drop(listener);
        drop(inbox);
        // Each connection's drain has a deadline (the send timeout), so this ends.
        while conns.join_next().await.is_some() {}
        let devices: Vec<Rc<dyn BlockIo>> = self
            .shared
            .namespaces
            .borrow()
            .iter()
            .flatten()
            .map(|ns| Rc::clone(&ns.dev))
            .collect();
        for (i, e) in bdev::flush_all(&devices).await {
            warn!(namespace = i, error = %e, "flush at shutdown failed");
        }
    }

    /// Serves namespace `nsid` of subsystem `nqn` (added to the target with
    /// [`Target::add_namespace`]) through `dev`, this thread's device for it. False if the
    /// target has no such namespace.
    pub fn attach_namespace(&self, nqn: &str, nsid: u32, dev: Rc<dyn BlockIo>) -> bool {
        let target = &self.shared.target;
        let Ok(subsys) = target.namespaces().subsystem(nqn) else {
            return false;
        };
        let Some(state) = target.namespaces().get(subsys, nsid) else {
            return false;
        };
        let mut table = self.shared.namespaces.borrow_mut();
        let Some(list) = table.get_mut(subsys) else {
            return false;
        };
        list.retain(|n| n.cfg.nsid != nsid);
        list.push(PortNamespace::new(target, state, dev));
        true
    }

    /// Stops serving namespace `nsid` of subsystem `nqn`: new commands for it fail with
    /// Invalid Namespace, those already at its device finish. Returns this thread's device
    /// for it (flush it, then drop it), if this view served it.
    pub fn detach_namespace(&self, nqn: &str, nsid: u32) -> Option<Rc<dyn BlockIo>> {
        let subsys = self.shared.target.namespaces().subsystem(nqn).ok()?;
        let mut table = self.shared.namespaces.borrow_mut();
        let list = table.get_mut(subsys)?;
        let at = list.iter().position(|n| n.cfg.nsid == nsid)?;
        Some(Rc::clone(&list.remove(at).dev))
    }

    /// Lets go of every namespace of the subsystem at `index` (removed with
    /// [`Target::remove_subsystem`]); returns this thread's devices for them (flush them,
    /// then drop them).
    pub fn detach_subsystem(&self, index: usize) -> Vec<Rc<dyn BlockIo>> {
        let mut table = self.shared.namespaces.borrow_mut();
        table
            .get_mut(index)
            .map(std::mem::take)
            .unwrap_or_default()
            .into_iter()
            .map(|n| Rc::clone(&n.dev))
            .collect()
    }

    /// Closes every connection of this port now, on every thread of its group; the listener
    /// stays up.
    pub fn drop_connections(&self) {
        self.shared.group.drop_tx.send_modify(|g| *g += 1);
    }

    /// Port ID.
    pub fn id(&self) -> u16 {
        self.shared.port_id
    }
}

/// Runs the discovery controller on `listener` until `shutdown` turns true. Its log lists
/// every port of every subsystem. Must run inside a `LocalSet`.
pub async fn run_discovery(
    target: Arc<Target>,
    listener: listener::Listener,
    shutdown: watch::Receiver<bool>,
) {
    let index = target.config().ports.len();
    // The discovery controller moves no block data: a few pages for Connect data sent
    // after an R2T.
    let pool = match BufPool::new(&[bdev::PoolClass {
        size: 4096,
        count: 16,
    }]) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "discovery controller: no memory for its buffers");
            return;
        }
    };
    let port = Port::build(target, index, 0, true, &PortGroup::new(), Vec::new(), pool);
    port.run(Some(listener), shutdown).await;
}

/// The next connection `listener` admits; pending forever without one.
async fn accept(listener: Option<&mut listener::Listener>) -> listener::Admitted {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// The next connection moved to this thread; pending forever once the inbox is gone.
async fn recv(inbox: Option<&mut mpsc::UnboundedReceiver<Box<Moving>>>) -> Option<Box<Moving>> {
    match inbox {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
