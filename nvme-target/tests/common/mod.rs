//! Test harness: a target with two ports (two controller threads) and a discovery controller
//! on 127.0.0.1, serving namespaces from shared in-memory devices.
#![allow(dead_code, clippy::cast_possible_truncation)]

pub mod raw;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bdev::ram::{RamDevice, RamIo};
use bdev::{BlockIo, BufPool, Geometry, Op, PoolClass, Request, Sink};
use nvme_target::host::{HostController, HostOptions, Namespace, Queue};
use nvme_target::{
    NamespaceConfig, Port, PortConfig, PortGroup, SubsystemConfig, Target, TargetConfig,
};
use tokio::sync::{mpsc, watch};

/// Subsystem any host may use.
pub const OPEN_NQN: &str = "nqn.2026-11.io.baton:test";
/// Subsystem only `ALLOWED_HOST` may use.
pub const LOCKED_NQN: &str = "nqn.2026-11.io.baton:locked";
/// The one host the locked subsystem admits.
pub const ALLOWED_HOST: &str =
    "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000aa";

/// An in-memory device shared by every port thread. It counts flushes, and reads of one
/// chosen offset can be held at the "device" until the test opens the gate (so a test can
/// see the target answer other commands while one is still at the device, and complete
/// out of order). Writes may land straight in its mapping; it counts those and the writes
/// submitted to it.
#[derive(Clone)]
pub struct MemDevice {
    ram: RamDevice,
    /// Reads may go out straight from the RAM device's mapping (its extents are offered).
    mapped: bool,
    flushes: Arc<AtomicUsize>,
    /// Reads submitted to the device (not those sent from its mapping).
    reads: Arc<AtomicUsize>,
    /// Writes submitted to the device.
    writes: Arc<AtomicUsize>,
    /// Writes whose data landed in its mapping.
    landed: Arc<AtomicUsize>,
    gate: Arc<Gate>,
    /// The threads that submitted reads.
    readers: Arc<Mutex<std::collections::HashSet<std::thread::ThreadId>>>,
}

#[derive(Default)]
struct Gate {
    /// Byte offset whose reads wait, if any.
    offset: Mutex<Option<u64>>,
    open: tokio::sync::Notify,
    held: AtomicUsize,
}

impl MemDevice {
    pub fn new(size: usize, block_size: u32) -> Self {
        Self {
            ram: RamDevice::new("test", size as u64, block_size).unwrap(),
            mapped: false,
            flushes: Arc::new(AtomicUsize::new(0)),
            reads: Arc::default(),
            writes: Arc::default(),
            landed: Arc::default(),
            gate: Arc::default(),
            readers: Arc::default(),
        }
    }

    /// A device whose reads may go out straight from its mapping.
    pub fn mapped(size: usize, block_size: u32) -> Self {
        Self {
            mapped: true,
            ..Self::new(size, block_size)
        }
    }

    /// Reads submitted to the device so far (all clones and threads together).
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    /// Writes submitted to the device so far.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    /// Writes whose data landed in the mapping so far.
    pub fn landed(&self) -> usize {
        self.landed.load(Ordering::SeqCst)
    }

    /// How many threads have submitted reads so far.
    pub fn reader_threads(&self) -> usize {
        self.readers.lock().unwrap().len()
    }

    /// Flushes so far (all clones and threads together).
    pub fn flushes(&self) -> usize {
        self.flushes.load(Ordering::SeqCst)
    }

    /// From now on, reads at byte `offset` wait at the device until [`MemDevice::open_gate`].
    pub fn hold_reads_at(&self, offset: u64) {
        *self.gate.offset.lock().unwrap() = Some(offset);
    }

    /// Reads waiting at the gate now.
    pub fn held(&self) -> usize {
        self.gate.held.load(Ordering::SeqCst)
    }

    /// Lets held reads (and later ones) go.
    pub fn open_gate(&self) {
        *self.gate.offset.lock().unwrap() = None;
        self.gate.open.notify_waiters();
    }

    fn open(&self) -> MemIo {
        MemIo {
            inner: Rc::new(self.ram.open()),
            dev: self.clone(),
        }
    }
}

/// One thread's handle on a [`MemDevice`].
struct MemIo {
    inner: Rc<RamIo>,
    dev: MemDevice,
}

impl BlockIo for MemIo {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn submit(&self, req: Request, sink: &Rc<dyn Sink>) {
        if req.op == Op::Flush {
            self.dev.flushes.fetch_add(1, Ordering::SeqCst);
        }
        if req.op == Op::Write {
            self.dev.writes.fetch_add(1, Ordering::SeqCst);
        }
        if req.op == Op::Read {
            self.dev.reads.fetch_add(1, Ordering::SeqCst);
            self.dev
                .readers
                .lock()
                .unwrap()
                .insert(std::thread::current().id());
        }
        let gated = req.op == Op::Read && *self.dev.gate.offset.lock().unwrap() == Some(req.offset);
        if !gated {
            return self.inner.submit(req, sink);
        }
        let (inner, gate, sink) = (
            Rc::clone(&self.inner),
            Arc::clone(&self.dev.gate),
            Rc::clone(sink),
        );
        let notified = Arc::clone(&gate);
        tokio::task::spawn_local(async move {
            let wait = notified.open.notified();
            gate.held.fetch_add(1, Ordering::SeqCst);
            if gate.offset.lock().unwrap().is_some() {
                wait.await;
            }
            gate.held.fetch_sub(1, Ordering::SeqCst);
            inner.submit(req, &sink);
        });
    }
    fn in_flight(&self) -> usize {
        self.dev.held()
    }
    fn extents(&self, offset: u64, len: u64, files: bool, out: &mut Vec<bdev::Extent>) -> bool {
        let gated = self.dev.gate.offset.lock().unwrap().is_some();
        self.dev.mapped && !gated && self.inner.extents(offset, len, files, out)
    }
    fn write_extents(&self, offset: u64, len: u64, out: &mut Vec<bdev::Extent>) -> bool {
        let ok = self.inner.write_extents(offset, len, out);
        if ok {
            self.dev.landed.fetch_add(1, Ordering::SeqCst);
        }
        ok
    }
}

/// A temporary file served by the file engine (io_uring where the kernel has it); reads may
/// go out with `sendfile`.
#[derive(Clone)]
pub struct FileDevice {
    dev: bdev::file::FileDevice,
}

impl FileDevice {
    pub fn new(size: u64) -> Self {
        let file = tempfile::tempfile().unwrap();
        file.set_len(size).unwrap();
        Self {
            dev: bdev::file::FileDevice::new(file, size, 512, false),
        }
    }

    fn open(&self) -> bdev::file::FileIo {
        self.dev.open(bdev::file::Engine::Auto, 64).unwrap()
    }
}

enum Cmd {
    DropConnections,
    /// Serve the spare device as namespace `nsid` of the open subsystem on this thread.
    Attach(u32, std::sync::mpsc::Sender<()>),
    /// Stop serving namespace `nsid` of the open subsystem on this thread.
    Detach(u32, std::sync::mpsc::Sender<()>),
}

/// A running target.
pub struct Harness {
    pub target: Arc<Target>,
    pub ports: Vec<SocketAddr>,
    pub discovery: SocketAddr,
    /// Namespace 2 of the open subsystem (in memory, counts flushes).
    pub ns2: MemDevice,
    /// Namespace 1 of the locked subsystem (in memory, large reads sent from its mapping).
    pub locked: MemDevice,
    /// A device no namespace uses at start, for namespaces added at run time.
    pub spare: MemDevice,
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    cmds: Vec<mpsc::UnboundedSender<Cmd>>,
}

fn nguid(n: u8) -> [u8; 16] {
    let mut g = [0x5a; 16];
    g[15] = n;
    g
}

fn namespace(nsid: u32, g: Geometry, n: u8) -> NamespaceConfig {
    NamespaceConfig {
        nsid,
        nguid: nguid(n),
        uuid: nguid(n + 100),
        block_size: g.block_size,
        num_blocks: g.size / u64::from(g.block_size),
        optimal_io_boundary: 128 * 1024,
        volatile_write_cache: true,
        ana_group: 1,
    }
}

impl Harness {
    /// Starts a target with two ports, using `tweak` to adjust the limits.
    pub fn start_with(tweak: impl FnOnce(&mut TargetConfig)) -> Self {
        // Namespace 1 is file-backed (zero-copy reads), namespace 2 in memory (copied reads).
        let ns1 = FileDevice::new(64 << 20);
        let ns2 = MemDevice::new(16 << 20, 4096);
        let locked = MemDevice::mapped(4 << 20, 512);
        let spare = MemDevice::new(8 << 20, 4096);
        let listeners: Vec<_> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let subsystems = vec![
            SubsystemConfig {
                nqn: OPEN_NQN.into(),
                serial: "BATONTEST0001".into(),
                model: "Baton test".into(),
                allow_any_host: true,
                allowed_hosts: vec![],
                namespaces: vec![
                    namespace(1, ns1.dev.geometry(), 1),
                    namespace(2, ns2.ram.geometry(), 2),
                ],
            },
            SubsystemConfig {
                nqn: LOCKED_NQN.into(),
                serial: "BATONTEST0002".into(),
                model: "Baton test".into(),
                allow_any_host: false,
                allowed_hosts: vec![ALLOWED_HOST.into()],
                namespaces: vec![namespace(1, locked.ram.geometry(), 3)],
            },
        ];
        let ports = vec![
            PortConfig {
                id: 1,
                addr: addrs[0],
            },
            PortConfig {
                id: 2,
                addr: addrs[1],
            },
        ];
        let mut cfg = TargetConfig::new(subsystems, ports);
        cfg.discovery = Some(addrs[2]);
        tweak(&mut cfg);
        let limit = cfg.limits.max_connections;
        let target = Target::new(cfg).unwrap();
        let budget = listener::Budget::new(4096);
        let (shutdown, _) = watch::channel(false);
        let mut threads = Vec::new();
        let mut cmds = Vec::new();
        // Both port threads serve both ports (poll groups): a port's connections are dealt
        // over the two threads, so every test also runs queues of one controller on two
        // threads.
        let groups = [PortGroup::new(), PortGroup::new()];
        for (i, listener) in listeners.into_iter().enumerate() {
            let target = Arc::clone(&target);
            let groups = groups.clone();
            let rx_shutdown = shutdown.subscribe();
            let (tx, mut rx) = mpsc::unbounded_channel();
            cmds.push(tx);
            let devs = (ns1.clone(), ns2.clone(), locked.clone(), spare.clone());
            let budget = budget.clone();
            threads.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    listener.set_nonblocking(true).unwrap();
                    let l = tokio::net::TcpListener::from_std(listener).unwrap();
                    let l = listener::Listener::new(l, "nvme-tcp", limit, budget);
                    if i == 2 {
                        nvme_target::run_discovery(target, l, rx_shutdown).await;
                        return;
                    }
                    let d: Vec<(String, u32, Rc<dyn BlockIo>)> = vec![
                        (OPEN_NQN.into(), 1, Rc::new(devs.0.open())),
                        (OPEN_NQN.into(), 2, Rc::new(devs.1.open())),
                        (LOCKED_NQN.into(), 1, Rc::new(devs.2.open())),
                    ];
                    let pool = BufPool::new(&[
                        PoolClass {
                            size: 4096,
                            count: 128,
                        },
                        PoolClass {
                            size: 128 << 10,
                            count: 32,
                        },
                        PoolClass {
                            size: 1 << 20,
                            count: 8,
                        },
                    ])
                    .unwrap();
                    let other = 1 - i;
                    let port = Port::new(
                        Arc::clone(&target),
                        u16::try_from(i + 1).unwrap(),
                        &groups[i],
                        d.clone(),
                        pool.clone(),
                    );
                    let view = Port::new(
                        target,
                        u16::try_from(other + 1).unwrap(),
                        &groups[other],
                        d,
                        pool,
                    );
                    let views = [Rc::clone(&port), Rc::clone(&view)];
                    let spare = devs.3;
                    tokio::task::spawn_local(async move {
                        while let Some(cmd) = rx.recv().await {
                            match cmd {
                                Cmd::DropConnections => views[0].drop_connections(),
                                Cmd::Attach(nsid, done) => {
                                    let dev: Rc<dyn BlockIo> = Rc::new(spare.open());
                                    for v in &views {
                                        assert!(v.attach_namespace(
                                            OPEN_NQN,
                                            nsid,
                                            Rc::clone(&dev)
                                        ));
                                    }
                                    done.send(()).unwrap();
                                }
                                Cmd::Detach(nsid, done) => {
                                    for v in &views {
                                        v.detach_namespace(OPEN_NQN, nsid);
                                    }
                                    done.send(()).unwrap();
                                }
                            }
                        }
                    });
                    tokio::task::spawn_local(view.run(None, rx_shutdown.clone()));
                    port.run(Some(l), rx_shutdown).await;
                });
            }));
        }
        // Connections are dealt only to the threads that have joined.
        let joined = Instant::now() + Duration::from_secs(10);
        while groups.iter().any(|g| g.members() < 2) {
            assert!(Instant::now() < joined, "port threads did not start");
            std::thread::sleep(Duration::from_millis(1));
        }
        Self {
            target,
            ports: addrs[..2].to_vec(),
            discovery: addrs[2],
            ns2,
            locked,
            spare,
            shutdown,
            threads,
            cmds,
        }
    }

    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Closes every connection of port `i`.
    pub fn drop_connections(&self, i: usize) {
        self.cmds[i].send(Cmd::DropConnections).unwrap();
    }

    /// Adds the spare device to the open subsystem as namespace `nsid` on both port threads,
    /// then announces it (as the appliance does).
    pub fn add_spare(&self, nsid: u32) {
        let cfg = namespace(nsid, self.spare.ram.geometry(), 9);
        self.target.add_namespace(OPEN_NQN, cfg).unwrap();
        self.on_port_threads(|done| Cmd::Attach(nsid, done));
        self.target.announce_namespace(OPEN_NQN, nsid).unwrap();
    }

    /// Removes namespace `nsid` of the open subsystem on both port threads, then announces
    /// it.
    pub fn remove_namespace(&self, nsid: u32) {
        self.target.remove_namespace(OPEN_NQN, nsid).unwrap();
        self.on_port_threads(|done| Cmd::Detach(nsid, done));
        self.target.announce_namespace(OPEN_NQN, nsid).unwrap();
    }

    fn on_port_threads(&self, cmd: impl Fn(std::sync::mpsc::Sender<()>) -> Cmd) {
        let (tx, rx) = std::sync::mpsc::channel();
        for c in &self.cmds[..2] {
            c.send(cmd(tx.clone())).unwrap();
        }
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
    }

    /// Graceful shutdown; returns once every port thread ended.
    pub fn stop(mut self) {
        self.shutdown.send_replace(true);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}

/// Connects a controller on port `addr` with one I/O queue and returns namespace 1.
pub async fn connect(addr: SocketAddr, opts: HostOptions) -> (HostController, Queue, Namespace) {
    let mut c = HostController::connect(addr, opts).await.unwrap();
    c.set_num_queues(2).await.unwrap();
    let q = c.connect_io_queue(1).await.unwrap();
    let ns = c.namespace(1).await.unwrap();
    (c, q, ns)
}

pub use baton_tests::pattern;

/// A current-thread runtime for a test's host side.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs one step of a test, failing it if the step takes longer than 30 s.
pub async fn timeout<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test step timed out")
}
