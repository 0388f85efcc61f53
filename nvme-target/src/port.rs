//! A port: one listener served by one controller thread, reaching every subsystem.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use bdev::{BlockIo, BufPool, CompletionQueue, Op, Request, Sink};

use crate::config::NamespaceConfig;
use crate::conn::Conn;
use crate::ctrl::Ctrl;
use crate::metrics::PortMetrics;
use crate::target::Target;

/// A namespace as a port sees it: its configuration, its device on this thread, and its
/// counters' position.
pub(crate) struct PortNamespace {
    pub cfg: NamespaceConfig,
    pub dev: Rc<dyn BlockIo>,
    pub index: usize,
    /// Position of its ANA group in [`crate::ana::Ana::groups`].
    pub ana_group: usize,
}

/// State shared by the connections of one port.
pub(crate) struct PortShared {
    pub target: Arc<Target>,
    /// Metrics index (position in the configuration; the discovery port is last).
    pub index: usize,
    pub port_id: u16,
    /// Serves only the discovery subsystem.
    pub discovery_only: bool,
    /// Per subsystem, its namespaces.
    pub namespaces: Vec<Vec<PortNamespace>>,
    /// The controller thread's I/O buffers (device buffers for reads and writes).
    pub pool: BufPool,
    /// Controllers of this port, for I/O queue Connects.
    pub controllers: RefCell<HashMap<(usize, u16), Weak<Ctrl>>>,
    drop_tx: watch::Sender<u64>,
}

impl PortShared {
    pub fn metrics(&self) -> &PortMetrics {
        &self.target.metrics().ports[self.index]
    }

    /// The ANA state of a namespace's group on this port.
    pub fn ana_state(&self, ns: &PortNamespace) -> Option<crate::ana::AnaState> {
        self.target.ana().state(self.index, ns.ana_group)
    }

    pub fn namespace(&self, subsys: usize, nsid: u32) -> Option<&PortNamespace> {
        self.namespaces
            .get(subsys)?
            .iter()
            .find(|n| n.cfg.nsid == nsid)
    }
}

/// One NVMe/TCP port, owned by one thread (not `Send`).
pub struct Port {
    shared: Rc<PortShared>,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("port_id", &self.shared.port_id)
            .finish()
    }
}

impl Port {
    /// A port with ID `port_id` (one of the configured ports) serving every subsystem with
    /// the given devices: `(subsystem NQN, nsid, device)` opened on this thread, whose data
    /// moves in buffers from `pool` (the thread's). Namespaces without a device here are not
    /// visible through this port.
    pub fn new(
        target: Arc<Target>,
        port_id: u16,
        devices: Vec<(String, u32, Rc<dyn BlockIo>)>,
        pool: BufPool,
    ) -> Rc<Self> {
        let index = target
            .config()
            .ports
            .iter()
            .position(|p| p.id == port_id)
            .unwrap_or(target.config().ports.len());
        let namespaces = target
            .config()
            .subsystems
            .iter()
            .map(|s| {
                s.namespaces
                    .iter()
                    .enumerate()
                    .filter_map(|(i, ns)| {
                        devices
                            .iter()
                            .find(|(nqn, nsid, _)| *nqn == s.nqn && *nsid == ns.nsid)
                            .map(|(_, _, dev)| PortNamespace {
                                cfg: ns.clone(),
                                dev: Rc::clone(dev),
                                index: i,
                                ana_group: target.ana().group_index(ns.ana_group).unwrap_or(0),
                            })
                    })
                    .collect()
            })
            .collect();
        Self::build(target, index, port_id, false, namespaces, pool)
    }

    fn build(
        target: Arc<Target>,
        index: usize,
        port_id: u16,
        discovery_only: bool,
        namespaces: Vec<Vec<PortNamespace>>,
        pool: BufPool,
    ) -> Rc<Self> {
        let (drop_tx, _) = watch::channel(0);
        Rc::new(Self {
            shared: Rc::new(PortShared {
                target,
                index,
                port_id,
                discovery_only,
                namespaces,
                pool,
                controllers: RefCell::new(HashMap::new()),
                drop_tx,
            }),
        })
    }

    /// Accepts connections through `listener` (its connection limit and the descriptor
    /// budget; a refused connection is just closed, NVMe/TCP has nothing to say before
    /// ICReq) until `shutdown` turns true, then lets every connection answer what it has
    /// received within the send timeout, fails commands still waiting for data, flushes the
    /// devices and returns. Must run inside a `LocalSet`.
    pub async fn run(
        self: Rc<Self>,
        mut listener: listener::Listener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut conns = JoinSet::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                r = shutdown.changed() => if r.is_err() { break },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                a = listener.accept() => {
                    debug!(peer = %a.peer, port = self.shared.port_id, "connection");
                    self.shared.metrics().connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let conn = Conn::new(Rc::clone(&self.shared));
                    let drop_rx = self.shared.drop_tx.subscribe();
                    conns.spawn_local(conn.serve(a.stream, a.slot, drop_rx, shutdown.clone()));
                }
            }
        }
        drop(listener);
        // Each connection's drain has a deadline (the send timeout), so this ends.
        while conns.join_next().await.is_some() {}
        let cq = Rc::new(CompletionQueue::default());
        let sink: Rc<dyn Sink> = cq.clone();
        let mut out = 0;
        for (i, ns) in self.shared.namespaces.iter().flatten().enumerate() {
            ns.dev
                .submit(Request::bare(Op::Flush, 0, 0, i as u64), &sink);
            out += 1;
        }
        // Each device has its own command deadlines, so this ends too.
        for _ in 0..out {
            let c = cq.next().await;
            if let Err(e) = c.result {
                warn!(namespace = c.tag, error = %e, "flush at shutdown failed");
            }
        }
    }

    /// Closes every connection of this port now; the listener stays up.
    pub fn drop_connections(&self) {
        self.shared.drop_tx.send_modify(|g| *g += 1);
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
    let port = Port::build(target, index, 0, true, Vec::new(), pool);
    port.run(listener, shutdown).await;
}
