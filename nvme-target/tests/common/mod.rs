//! Test harness: a target with two ports (two controller threads) and a discovery controller
//! on 127.0.0.1, serving namespaces from shared in-memory devices.
#![allow(dead_code, clippy::cast_possible_truncation)]

pub mod raw;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nvme_target::host::{HostController, HostOptions, Namespace, Queue};
use nvme_target::{
    BlockDevice, NamespaceConfig, Port, PortConfig, SubsystemConfig, Target, TargetConfig,
};
use tokio::sync::{mpsc, watch};

/// Subsystem any host may use.
pub const OPEN_NQN: &str = "nqn.2026-11.io.baton:test";
/// Subsystem only `ALLOWED_HOST` may use.
pub const LOCKED_NQN: &str = "nqn.2026-11.io.baton:locked";
/// The one host the locked subsystem admits.
pub const ALLOWED_HOST: &str =
    "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000aa";

/// An in-memory device shared by every port thread (a mutex is fine in a test double).
#[derive(Clone)]
pub struct MemDevice {
    data: Arc<Mutex<Vec<u8>>>,
    block_size: u32,
    flushes: Arc<AtomicUsize>,
}

impl MemDevice {
    pub fn new(size: usize, block_size: u32) -> Self {
        Self {
            data: Arc::new(Mutex::new(vec![0; size])),
            block_size,
            flushes: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Flushes so far (all clones and threads together).
    pub fn flushes(&self) -> usize {
        self.flushes.load(Ordering::SeqCst)
    }

    fn range(&self, offset: u64, len: usize) -> std::io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let end = start
            .checked_add(len)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        if end > self.data.lock().unwrap().len() {
            return Err(std::io::ErrorKind::InvalidInput.into());
        }
        Ok(start..end)
    }
}

impl BlockDevice for MemDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.data.lock().unwrap().len() as u64 / u64::from(self.block_size)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data.lock().unwrap()[r]);
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        let r = self.range(offset, buf.len())?;
        self.data.lock().unwrap()[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let r = self.range(offset, usize::try_from(len).unwrap())?;
        self.data.lock().unwrap()[r].fill(0);
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.write_zeroes(offset, len)
    }
}

/// A file-backed device shared by every port thread; reads may go out with `sendfile`.
#[derive(Clone)]
pub struct FileDevice {
    file: Arc<std::fs::File>,
    size: u64,
}

impl FileDevice {
    pub fn new(size: u64) -> Self {
        let file = tempfile::tempfile().unwrap();
        file.set_len(size).unwrap();
        Self {
            file: Arc::new(file),
            size,
        }
    }
}

impl BlockDevice for FileDevice {
    fn block_size(&self) -> u32 {
        512
    }
    fn num_blocks(&self) -> u64 {
        self.size / 512
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&*self.file, buf, offset)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&*self.file, buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.write_at(offset, &vec![0; usize::try_from(len).unwrap()])
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.write_zeroes(offset, len)
    }
    fn file_extents(
        &self,
        offset: u64,
        len: u64,
        out: &mut Vec<nvme_target::blockdev::FileExtent>,
    ) -> bool {
        out.push(nvme_target::blockdev::FileExtent {
            file: Arc::clone(&self.file),
            offset,
            len: usize::try_from(len).unwrap(),
        });
        true
    }
}

enum Cmd {
    DropConnections,
}

/// A running target.
pub struct Harness {
    pub target: Arc<Target>,
    pub ports: Vec<SocketAddr>,
    pub discovery: SocketAddr,
    /// Namespace 2 of the open subsystem (in memory, counts flushes).
    pub ns2: MemDevice,
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    cmds: Vec<mpsc::UnboundedSender<Cmd>>,
}

fn nguid(n: u8) -> [u8; 16] {
    let mut g = [0x5a; 16];
    g[15] = n;
    g
}

fn namespace(nsid: u32, dev: &dyn BlockDevice, n: u8) -> NamespaceConfig {
    NamespaceConfig {
        nsid,
        nguid: nguid(n),
        uuid: nguid(n + 100),
        block_size: dev.block_size(),
        num_blocks: dev.num_blocks(),
        optimal_io_boundary: 128 * 1024,
        volatile_write_cache: true,
    }
}

impl Harness {
    /// Starts a target with two ports, using `tweak` to adjust the limits.
    pub fn start_with(tweak: impl FnOnce(&mut TargetConfig)) -> Self {
        // Namespace 1 is file-backed (zero-copy reads), namespace 2 in memory (copied reads).
        let ns1 = FileDevice::new(64 << 20);
        let ns2 = MemDevice::new(16 << 20, 4096);
        let locked = MemDevice::new(4 << 20, 512);
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
                namespaces: vec![namespace(1, &ns1, 1), namespace(2, &ns2, 2)],
            },
            SubsystemConfig {
                nqn: LOCKED_NQN.into(),
                serial: "BATONTEST0002".into(),
                model: "Baton test".into(),
                allow_any_host: false,
                allowed_hosts: vec![ALLOWED_HOST.into()],
                namespaces: vec![namespace(1, &locked, 3)],
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
        for (i, listener) in listeners.into_iter().enumerate() {
            let target = Arc::clone(&target);
            let rx_shutdown = shutdown.subscribe();
            let (tx, mut rx) = mpsc::unbounded_channel();
            cmds.push(tx);
            let devs = (ns1.clone(), ns2.clone(), locked.clone());
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
                    let d: Vec<(String, u32, Rc<dyn BlockDevice>)> = vec![
                        (OPEN_NQN.into(), 1, Rc::new(devs.0)),
                        (OPEN_NQN.into(), 2, Rc::new(devs.1)),
                        (LOCKED_NQN.into(), 1, Rc::new(devs.2)),
                    ];
                    let port = Port::new(target, u16::try_from(i + 1).unwrap(), d);
                    let p2 = Rc::clone(&port);
                    tokio::task::spawn_local(async move {
                        while let Some(Cmd::DropConnections) = rx.recv().await {
                            p2.drop_connections();
                        }
                    });
                    port.run(l, rx_shutdown).await;
                });
            }));
        }
        Self {
            target,
            ports: addrs[..2].to_vec(),
            discovery: addrs[2],
            ns2,
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
