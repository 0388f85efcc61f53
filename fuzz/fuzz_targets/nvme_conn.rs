//! A whole NVMe/TCP connection driven by fuzz bytes: a target with one subsystem on a RAM
//! namespace and a discovery controller, on loopback, on a current-thread runtime. Never a
//! panic; every input ends within its deadlines (short handshake, idle and send timeouts).
//!
//! Input: one mode byte, then the bytes the host sends.
//! * mode 0: straight after accept (ICReq parsing and everything before Connect);
//! * mode 1: after ICReq and an admin Connect (admin and Fabrics commands);
//! * mode 2: on I/O queue 1 of an enabled controller (I/O commands, R2T and H2CData);
//! * mode 3: after ICReq and a Connect to the discovery controller.
#![no_main]

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nvme_spec::command::{SglDescriptor, Sqe, admin_opcode, feature};
use nvme_spec::fabrics::{ConnectCmd, ConnectData, DISCOVERY_NQN, PropertyCmd, fctype};
use nvme_spec::pdu::{CommonHeader, pdu_type};
use nvme_spec::regs::offset;
use nvme_spec::{FromBytes, FromZeros, IntoBytes, put_str};
use nvme_target::{NamespaceConfig, Port, PortConfig, SubsystemConfig, Target, TargetConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NQN: &str = "nqn.2026-11.io.baton:fuzz";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:fuzz";
/// Whole input, connection setup to teardown; the target's own deadlines end it sooner.
const INPUT_DEADLINE: Duration = Duration::from_secs(5);

fn capsule(sqe: &[u8], data: &[u8]) -> Vec<u8> {
    let pdo = if data.is_empty() { 0 } else { 72 };
    let plen = u32::try_from(72 + data.len()).unwrap_or(u32::MAX);
    let mut v = CommonHeader::new(pdu_type::CAPSULE_CMD, 0, 72, pdo, plen)
        .as_bytes()
        .to_vec();
    v.extend_from_slice(sqe);
    v.extend_from_slice(data);
    v
}

fn ic_req() -> [u8; 128] {
    let mut req = [0u8; 128];
    req[0] = pdu_type::IC_REQ;
    req[2] = 128;
    req[4] = 128;
    req
}

fn connect(subnqn: &str, qid: u16, cntlid: u16) -> Vec<u8> {
    let mut cmd = ConnectCmd::new_zeroed();
    cmd.opcode = admin_opcode::FABRICS;
    cmd.fctype = fctype::CONNECT;
    cmd.cid.set(0xfff0);
    cmd.qid.set(qid);
    cmd.sqsize.set(31);
    cmd.dptr.kind = SglDescriptor::DATA_BLOCK_OFFSET;
    cmd.dptr.length.set(1024);
    let mut d = ConnectData::new_zeroed();
    d.cntlid.set(cntlid);
    put_str(&mut d.subnqn, subnqn);
    put_str(&mut d.hostnqn, HOSTNQN);
    capsule(cmd.as_bytes(), d.as_bytes())
}

/// Reads PDUs until the one answering command `cid`; returns its CQE's first dword.
async fn answer(s: &mut TcpStream, cid: u16) -> Option<u32> {
    loop {
        let mut ch = [0u8; 8];
        s.read_exact(&mut ch).await.ok()?;
        let plen = u32::from_le_bytes(ch[4..8].try_into().ok()?) as usize;
        let mut rest = vec![0u8; plen.checked_sub(8)?];
        s.read_exact(&mut rest).await.ok()?;
        if ch[0] == pdu_type::CAPSULE_RESP && u16::from_le_bytes([rest[12], rest[13]]) == cid {
            return Some(u32::from_le_bytes(rest[..4].try_into().ok()?));
        }
    }
}

async fn admin_setup(port: SocketAddr, subnqn: &str) -> Option<(TcpStream, u16)> {
    let mut s = TcpStream::connect(port).await.ok()?;
    s.write_all(&ic_req()).await.ok()?;
    let mut icresp = [0u8; 128];
    s.read_exact(&mut icresp).await.ok()?;
    s.write_all(&connect(subnqn, 0, 0xffff)).await.ok()?;
    let cntlid = u16::try_from(answer(&mut s, 0xfff0).await? & 0xffff).ok()?;
    Some((s, cntlid))
}

/// An admin queue with two I/O queues granted and CC.EN set, then I/O queue 1.
async fn io_setup(port: SocketAddr) -> Option<(TcpStream, TcpStream)> {
    let (mut admin, cntlid) = admin_setup(port, NQN).await?;
    let mut nq = Sqe::new_zeroed();
    nq.opcode = admin_opcode::SET_FEATURES;
    nq.cid.set(0xfff1);
    nq.cdw10.set(u32::from(feature::NUM_QUEUES));
    nq.cdw11.set(1 | (1 << 16));
    admin.write_all(&capsule(nq.as_bytes(), &[])).await.ok()?;
    answer(&mut admin, 0xfff1).await?;
    let mut p = PropertyCmd::new_zeroed();
    p.opcode = admin_opcode::FABRICS;
    p.fctype = fctype::PROPERTY_SET;
    p.cid.set(0xfff2);
    p.offset.set(offset::CC);
    p.value.set(1 | (6 << 16) | (4 << 20));
    let sqe = Sqe::read_from_bytes(p.as_bytes()).ok()?;
    admin.write_all(&capsule(sqe.as_bytes(), &[])).await.ok()?;
    answer(&mut admin, 0xfff2).await?;
    let mut io = TcpStream::connect(port).await.ok()?;
    io.write_all(&ic_req()).await.ok()?;
    let mut icresp = [0u8; 128];
    io.read_exact(&mut icresp).await.ok()?;
    io.write_all(&connect(NQN, 1, cntlid)).await.ok()?;
    answer(&mut io, 0xfff0).await?;
    Some((admin, io))
}

/// Sends `bytes` as the host, half-closes, and reads whatever comes back until the target
/// closes.
async fn drive(mut s: TcpStream, bytes: &[u8]) {
    let (mut rd, mut wr) = s.split();
    let write = async {
        let _ = wr.write_all(bytes).await;
        let _ = wr.shutdown().await;
    };
    let read = async {
        let mut sink = vec![0u8; 64 << 10];
        while let Ok(n) = rd.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::join!(write, read);
}

fn target(port: SocketAddr, discovery: SocketAddr) -> std::sync::Arc<Target> {
    let ns = NamespaceConfig {
        nsid: 1,
        nguid: [7; 16],
        uuid: [8; 16],
        block_size: 512,
        num_blocks: 2048,
        optimal_io_boundary: 0,
        volatile_write_cache: true,
        ana_group: 1,
    };
    let subsystem = SubsystemConfig {
        nqn: NQN.into(),
        serial: "FUZZ".into(),
        model: "Baton fuzz".into(),
        allow_any_host: true,
        allowed_hosts: Vec::new(),
        namespaces: vec![ns],
    };
    let mut cfg = TargetConfig::new(vec![subsystem], vec![PortConfig { id: 1, addr: port }]);
    cfg.discovery = Some(discovery);
    cfg.limits.handshake_timeout = Duration::from_millis(200);
    cfg.limits.idle_timeout = Duration::from_millis(200);
    cfg.limits.send_timeout = Duration::from_millis(200);
    cfg.max_transfer = 64 << 10;
    Target::new(cfg).expect("valid fuzz target configuration")
}

/// The target, kept across inputs (one runtime, one `LocalSet` whose port tasks live on):
/// setting it up per input would cost more than running most inputs.
struct Rig {
    rt: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
    port: SocketAddr,
    discovery: SocketAddr,
    /// Never sent: the rig serves as long as the fuzzing process runs.
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Rig {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        let std_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let std_disc = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = std_port.local_addr().expect("addr");
        let discovery = std_disc.local_addr().expect("addr");
        let t = target(port, discovery);
        let budget = listener::Budget::new(64);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        local.block_on(&rt, async {
            let listen = |l: std::net::TcpListener| {
                l.set_nonblocking(true).expect("nonblocking");
                listener::Listener::new(
                    tokio::net::TcpListener::from_std(l).expect("listener"),
                    "fuzz",
                    32,
                    budget.clone(),
                )
            };
            let (port_l, disc_l) = (listen(std_port), listen(std_disc));
            // A 1 MiB namespace in memory, through the RAM engine.
            let ram = bdev::ram::RamDevice::new("fuzz", 1 << 20, 512).expect("memfd");
            let dev: Rc<dyn bdev::BlockIo> = Rc::new(ram.open());
            let pool = bdev::BufPool::small(8).expect("buffers");
            let group = nvme_target::PortGroup::new();
            let p = Port::new(
                std::sync::Arc::clone(&t),
                1,
                &group,
                vec![(NQN.into(), 1, dev)],
                pool,
            );
            tokio::task::spawn_local(p.run(Some(port_l), stop_rx.clone()));
            tokio::task::spawn_local(nvme_target::run_discovery(t, disc_l, stop_rx));
        });
        Self {
            rt,
            local,
            port,
            discovery,
            _stop: stop,
        }
    }
}

thread_local! {
    static RIG: Rig = Rig::new();
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, host)) = data.split_first() else {
        return;
    };
    RIG.with(|rig| {
        let (addr, daddr) = (rig.port, rig.discovery);
        let session = async {
            match mode % 4 {
                0 => {
                    if let Ok(s) = TcpStream::connect(addr).await {
                        drive(s, host).await;
                    }
                }
                1 => {
                    if let Some((s, _)) = admin_setup(addr, NQN).await {
                        drive(s, host).await;
                    }
                }
                2 => {
                    if let Some((_admin, io)) = io_setup(addr).await {
                        drive(io, host).await;
                    }
                }
                _ => {
                    if let Some((s, _)) = admin_setup(daddr, DISCOVERY_NQN).await {
                        drive(s, host).await;
                    }
                }
            }
        };
        // The target's own deadlines end every session sooner; this only guards them.
        let done = rig.local.block_on(&rig.rt, async {
            tokio::time::timeout(INPUT_DEADLINE, session).await
        });
        assert!(done.is_ok(), "a session outlived every deadline");
    });
});
