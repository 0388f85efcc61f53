//! The real `baton` binary serving NVMe/TCP: data through two controllers, status, metrics,
//! dropping one controller's connections, graceful shutdown; hostile lengths, floods of idle
//! and half-open connections and hosts that stop reading, with the process's RSS and open
//! descriptors checked against bounds.
// An integration test crate: every function in it is a test.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nvme_target::host::{HostController, HostOptions, Namespace, Queue};

use common::free_port;

const NQN: &str = "nqn.2026-11.io.baton:test";

/// Runs blocking CLI/HTTP helpers from inside the async test body.
fn off_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

struct Baton {
    child: Child,
    admin: SocketAddr,
    discovery: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Baton {
    fn start() -> Self {
        Self::start_with("")
    }

    /// Starts `baton serve` with `extra` appended to the test configuration (a `limits:`
    /// section, say).
    fn start_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let discovery: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cfg = format!(
            "data_dir: {data}\ncontrollers: {{count: 2}}\nnvme_tcp: {{base_port: 0, discovery_port: {dport}}}\n\
             admin: {{address: \"{admin}\"}}\n\
             devices:\n  - {{name: r0, kind: ram, size: 32MiB}}\n  - {{name: f0, kind: file, path: f0.img, size: 32MiB}}\n\
             \x20 - {{name: r1, kind: ram, size: 8MiB}}\n\
             volumes:\n  - {{name: v0, devices: [r0, f0], stripe_size: 64KiB, block_size: 512}}\n\
             \x20 - {{name: spare, devices: [r1], block_size: 4096}}\n\
             subsystems:\n  - nqn: {NQN}\n    allow_any_host: true\n    namespaces: [{{nsid: 1, volume: v0}}]\n{extra}",
            data = dir.path().display(),
            dport = discovery.port()
        );
        let path = dir.path().join("baton.yaml");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let b = Self {
            child,
            admin,
            discovery,
            _dir: dir,
        };
        let t = Instant::now();
        while baton::admin::fetch_status(admin).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "baton did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(args)
            .args(["--admin", &self.admin.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "baton {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin token file's path, for `baton ctl --token-file`.
    fn token_file(&self) -> String {
        self._dir
            .path()
            .join("admin.token")
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// The configuration file `baton serve` was started with.
    fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("baton.yaml")
    }

    /// Writes `text` as the configuration and sends SIGHUP.
    fn reload(&self, text: &str) {
        std::fs::write(self.config_path(), text).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.pid()).unwrap()),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    }

    /// Resident memory of the process in KiB.
    fn rss_kib(&self) -> u64 {
        let st = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        st.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Open descriptors of the process.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    fn ports(&self) -> Vec<SocketAddr> {
        let st = baton::admin::fetch_status(self.admin).unwrap();
        st.controllers
            .iter()
            .map(|c| c.nvme_tcp.parse().unwrap())
            .collect()
    }

    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "baton exited with {st}");
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "baton did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        // Only if a test failed before stop(): do not leave the process behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A host controller with one I/O queue on each of the first two ports, and namespace 1.
async fn two_paths(
    ports: &[SocketAddr],
) -> (HostController, Queue, HostController, Queue, Namespace) {
    let mut paths = Vec::new();
    for &port in &ports[..2] {
        let mut h = HostController::connect(port, HostOptions::new(NQN))
            .await
            .unwrap();
        h.set_num_queues(1).await.unwrap();
        let q = h.connect_io_queue(1).await.unwrap();
        paths.push((h, q));
    }
    let (mut a, qa) = paths.remove(0);
    let (c, qc) = paths.remove(0);
    let ns = a.namespace(1).await.unwrap();
    (a, qa, c, qc, ns)
}

#[test]
fn serves_a_striped_volume_through_two_controllers() {
    let b = Baton::start();
    let ports = b.ports();
    assert_eq!(ports.len(), 2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut a, mut qa, _c, mut qc, ns) = two_paths(&ports).await;
        assert_eq!(ns.blocks * 512, 64 << 20);
        let id = a.identify_namespace(1).await.unwrap();
        assert_eq!(id.noiob.get(), 128, "NOIOB is the stripe size in blocks");
        // Across the stripe boundary and both members.
        let data: Vec<u8> = (0..256 * 1024u32)
            .map(|i| u8::try_from(i * 7 % 251).unwrap())
            .collect();
        qa.write(&ns, 100, &data).await.unwrap();
        assert!(qc.read(&ns, 100, data.len()).await.unwrap() == data);

        let status = off_thread(|| b.cli(&["status"]));
        assert!(status.contains(NQN), "{status}");
        assert!(
            status.contains("nqn.2014-08.org.nvmexpress:uuid:"),
            "hosts listed: {status}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&off_thread(|| b.cli(&["status", "--json"]))).unwrap();
        assert_eq!(json["subsystems"][0]["hosts"].as_array().unwrap().len(), 2);

        let metrics =
            off_thread(|| baton::admin::call(b.admin, hyper::Method::GET, "/metrics").unwrap());
        let metrics = String::from_utf8(metrics.to_vec()).unwrap();
        let value = |prefix: &str| -> f64 {
            metrics
                .lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix} missing"))
                .rsplit(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!(value("baton_nvme_bytes_total{controller=\"0\",direction=\"write\"}") >= 262_144.0);
        assert!(value("baton_nvme_bytes_total{controller=\"1\",direction=\"read\"}") >= 262_144.0);
        assert_eq!(
            value(&format!(
                "baton_subsystem_connected_hosts{{subsystem=\"{NQN}\"}}"
            )),
            2.0
        );
        assert_eq!(value("baton_controller_up{controller=\"1\"}"), 1.0);
        // DH-HMAC-CHAP counters: exported per controller and reason, none here (no host
        // has secrets in this configuration).
        assert_eq!(
            value("baton_nvme_auth_successes_total{controller=\"0\"}"),
            0.0
        );
        assert_eq!(
            value("baton_nvme_auth_failures_total{controller=\"1\",reason=\"host_refused\"}"),
            0.0
        );

        // Dropping controller 0's connections leaves controller 1's path working.
        let token = b._dir.path().join("admin.token");
        let token = token.to_str().unwrap();
        off_thread(|| {
            b.cli(&[
                "ctl",
                "drop-connections",
                "--controller",
                "0",
                "--token-file",
                token,
            ])
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(qa.read(&ns, 100, 512).await.is_err());
        assert!(qc.read(&ns, 100, 512).await.unwrap() == data[..512]);
    });
    b.stop();
}

/// Raw NVMe/TCP bytes, for hosts that misbehave on purpose.
mod raw {
    use std::io::Write;
    use std::net::{SocketAddr, TcpStream};

    use baton_tests::nvme_tcp;

    use nvme_spec::command::{SglDescriptor, Sqe, admin_opcode};
    use nvme_spec::fabrics::{ConnectCmd, ConnectData, fctype};
    use nvme_spec::pdu::{CommonHeader, pdu_type};
    use nvme_spec::{FromZeros, IntoBytes, put_str};

    /// A connection; `data_digest` once ICReq negotiated data digests.
    pub struct Raw(pub TcpStream, bool);

    impl Raw {
        pub fn open(addr: SocketAddr) -> Self {
            Self(nvme_tcp::connect(addr), false)
        }

        pub fn send(&mut self, bytes: &[u8]) {
            self.0.write_all(bytes).unwrap();
        }

        /// One PDU.
        pub fn recv(&mut self) -> Vec<u8> {
            nvme_tcp::read_pdu(&mut self.0)
        }

        pub fn ic(&mut self) {
            self.ic_with(false);
        }

        /// ICReq, asking for data digests if `data_digest`.
        pub fn ic_with(&mut self, data_digest: bool) {
            let mut req = [0u8; 128];
            req[0] = pdu_type::IC_REQ;
            req[2] = 128;
            req[4] = 128;
            req[11] = if data_digest { 2 } else { 0 };
            self.send(&req);
            let resp = self.recv();
            assert_eq!(resp[0], pdu_type::IC_RESP);
            self.1 = resp[11] & 2 != 0;
        }

        /// Sends a Connect (`len` bytes of data by R2T, or 1 KiB in the capsule if `len` is
        /// `None`) and returns the answer.
        pub fn connect(
            &mut self,
            subnqn: &str,
            hostnqn: &str,
            qid: u16,
            cntlid: u16,
            len: Option<u32>,
        ) -> Vec<u8> {
            let mut cmd = ConnectCmd::new_zeroed();
            cmd.opcode = admin_opcode::FABRICS;
            cmd.fctype = fctype::CONNECT;
            cmd.qid.set(qid);
            cmd.sqsize.set(31);
            let mut d = ConnectData::new_zeroed();
            d.cntlid.set(cntlid);
            put_str(&mut d.subnqn, subnqn);
            put_str(&mut d.hostnqn, hostnqn);
            match len {
                Some(l) => {
                    cmd.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
                    cmd.dptr.length.set(l);
                    self.send(&capsule(cmd.as_bytes(), 0));
                }
                None => {
                    cmd.dptr.kind = SglDescriptor::DATA_BLOCK_OFFSET;
                    cmd.dptr.length.set(1024);
                    let dd = if self.1 { 4 } else { 0 };
                    let mut pdu = capsule(cmd.as_bytes(), 1024 + dd);
                    pdu.extend_from_slice(d.as_bytes());
                    if self.1 {
                        // DDGSTF, and the digest after the data.
                        pdu[1] |= 2;
                        pdu.extend_from_slice(&crc32c::crc32c(d.as_bytes()).to_le_bytes());
                    }
                    self.send(&pdu);
                }
            }
            self.recv()
        }

        /// A command whose data moves by R2T or C2HData.
        pub fn command(&mut self, mut sqe: Sqe, len: u32) {
            sqe.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
            sqe.dptr.length.set(len);
            self.send(&capsule(sqe.as_bytes(), 0));
        }
    }

    impl Raw {
        /// Sends `data` at `offset` for the command an R2T asked for (not the last PDU unless
        /// it completes the R2T).
        pub fn h2c_data(&mut self, r2t: &[u8], offset: u32, data: &[u8]) {
            let r2tl = u32::from_le_bytes(r2t[16..20].try_into().unwrap());
            let len = u32::try_from(data.len()).unwrap();
            let last = if offset + len == r2tl {
                nvme_spec::pdu::flags::LAST_PDU
            } else {
                0
            };
            let mut h = nvme_spec::pdu::DataHeader {
                ch: CommonHeader::new(pdu_type::H2C_DATA, last, 24, 24, 24 + len),
                ..nvme_spec::pdu::DataHeader::default()
            };
            h.cccid.set(u16::from_le_bytes([r2t[8], r2t[9]]));
            h.ttag.set(u16::from_le_bytes([r2t[10], r2t[11]]));
            h.datao.set(offset);
            h.datal.set(len);
            let mut pdu = h.as_bytes().to_vec();
            pdu.extend_from_slice(data);
            self.send(&pdu);
        }
    }

    pub use baton_tests::nvme_tcp::{capsule, status_of};
}

/// A host controller with one I/O queue and namespace 1, keeping its controller alive with
/// a long keep-alive.
async fn well_behaved_host(addr: SocketAddr) -> (HostController, Queue, Namespace) {
    let opts = HostOptions {
        kato_ms: 60_000,
        ..HostOptions::new(NQN)
    };
    let mut c = HostController::connect(addr, opts).await.unwrap();
    c.set_num_queues(8).await.unwrap();
    let q = c.connect_io_queue(1).await.unwrap();
    let ns = c.namespace(1).await.unwrap();
    (c, q, ns)
}

/// A raw I/O queue `qid` (2 to 8) joining `c`'s controller.
fn raw_io_queue(addr: SocketAddr, c: &HostController, qid: u16) -> raw::Raw {
    raw_io_queue_with(addr, c, qid, false)
}

/// A raw I/O queue, with data digests if `data_digest` (reads of file extents are then
/// copied into the connection's output buffer instead of going out with `sendfile`).
fn raw_io_queue_with(
    addr: SocketAddr,
    c: &HostController,
    qid: u16,
    data_digest: bool,
) -> raw::Raw {
    let mut r = raw::Raw::open(addr);
    r.ic_with(data_digest);
    let resp = r.connect(NQN, &HostOptions::new(NQN).hostnqn, qid, c.cntlid(), None);
    assert_eq!(raw::status_of(&resp), 0, "raw I/O queue connect");
    r
}

/// Slack over the baseline RSS that every hostile scenario must stay under: the R2T budget
/// (4 MiB) and output buffers of the few connections involved, allocator slack, and the
/// test's own I/O. The attacks measured on the old code grew the process by 1 GiB each.
const RSS_SLACK_KIB: u64 = 96 * 1024;

#[test]
fn hostile_lengths_do_not_grow_the_process() {
    use nvme_spec::command::{Sqe, admin_opcode, io_opcode};
    use nvme_spec::pdu::pdu_type;
    use nvme_spec::{FromZeros, status};

    let b = Baton::start();
    let ports = b.ports();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (c, mut q, ns) = rt.block_on(well_behaved_host(ports[0]));
    let data = baton_tests::pattern(1 << 20, 1);
    rt.block_on(q.write(&ns, 0, &data)).unwrap();
    let base = b.rss_kib();

    // Connect with 1 GiB of data by R2T, on a port and on the discovery port (any host).
    for addr in [ports[0], ports[1], b.discovery] {
        for _ in 0..4 {
            let mut r = raw::Raw::open(addr);
            r.ic();
            let resp = r.connect(
                NQN,
                "nqn.2014-08.org.nvmexpress:uuid:attacker",
                0,
                0xffff,
                Some(1 << 30),
            );
            assert_eq!(resp[0], pdu_type::CAPSULE_RESP, "no R2T");
            assert_eq!(raw::status_of(&resp) & 0x7ff, status::SGL_LENGTH_INVALID);
        }
    }
    // Get Log Page of 1 GiB on the discovery port.
    let mut d = raw::Raw::open(b.discovery);
    d.ic();
    let resp = d.connect(
        nvme_spec::fabrics::DISCOVERY_NQN,
        "nqn.2014-08.org.nvmexpress:uuid:attacker",
        0,
        0xffff,
        None,
    );
    assert_eq!(raw::status_of(&resp), 0);
    let mut glp = Sqe::new_zeroed();
    glp.opcode = admin_opcode::GET_LOG_PAGE;
    let numd: u32 = (1 << 28) - 1;
    glp.cdw10.set(0x70 | ((numd & 0xffff) << 16));
    glp.cdw11.set(numd >> 16);
    d.command(glp, 1 << 30);
    let resp = d.recv();
    assert_eq!(resp[0], pdu_type::CAPSULE_RESP, "no 1 GiB of C2HData");
    assert_ne!(raw::status_of(&resp), 0);
    // Four I/O queues, each asking to write 16 x 1 MiB: R2Ts for the 4 MiB budget only,
    // then 128 KiB of data for each.
    let mut stalled = Vec::new();
    for qid in 2..6 {
        let mut r = raw_io_queue(ports[0], &c, qid);
        for cid in 0..16u16 {
            let mut w = Sqe::new_zeroed();
            w.opcode = io_opcode::WRITE;
            w.cid.set(cid);
            w.nsid.set(1);
            w.set_lba_range(u64::from(cid) * 2048, 2048);
            r.command(w, 1 << 20);
        }
        for _ in 0..4 {
            let r2t = r.recv();
            assert_eq!(r2t[0], pdu_type::R2T);
            r.h2c_data(&r2t, 0, &data[..128 << 10]);
        }
        stalled.push(r);
    }
    let grown = b.rss_kib().saturating_sub(base);
    assert!(
        grown < RSS_SLACK_KIB,
        "RSS grew by {grown} KiB (from {base} KiB)"
    );
    // The well-behaved host was not disturbed.
    assert!(rt.block_on(q.read(&ns, 0, data.len())).unwrap() == data);
    drop(stalled);
    drop(c);
    b.stop();
}

/// Limits small enough for a test to reach: 256 connections per NVMe/TCP listener, 1 s to
/// finish ICReq and Connect, 2 s idle, 1 s to take output.
const SMALL_LIMITS: &str = "limits: {nvme_tcp_connections: 256, handshake_timeout_ms: 1000, \
     idle_timeout_ms: 2000, send_timeout_ms: 1000}\n";

/// Descriptors the process may have open beyond its baseline during the flood: one
/// listener's cap (256 connections) and a little slack for the runtime.
const FD_SLACK: usize = 256 + 32;

#[test]
fn floods_of_idle_and_half_open_connections_leave_a_host_working() {
    // The flood needs 4,000 sockets on this side.
    listener::raise_descriptor_limit().unwrap();
    let b = Baton::start_with(SMALL_LIMITS);
    let ports = b.ports();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut c, mut q, ns) = rt.block_on(well_behaved_host(ports[0]));
    let data = baton_tests::pattern(64 << 10, 2);
    rt.block_on(q.write(&ns, 0, &data)).unwrap();
    let base_fds = b.fds();
    let base_rss = b.rss_kib();
    let mut peak_fds = 0;
    let mut peak_rss = 0;
    let mut flood = Vec::with_capacity(4000);
    for round in 0..20u64 {
        // 100 idle connections and 100 that send half an ICReq, then the host's I/O.
        for _ in 0..100 {
            flood.push(std::net::TcpStream::connect(ports[0]).unwrap());
            let mut s = std::net::TcpStream::connect(ports[0]).unwrap();
            let _ = std::io::Write::write_all(&mut s, &[0, 0, 128, 0, 128, 0, 0, 0]);
            flood.push(s);
        }
        rt.block_on(async {
            c.keep_alive().await.unwrap();
            q.write(&ns, round * 128, &data).await.unwrap();
            assert!(q.read(&ns, round * 128, data.len()).await.unwrap() == data);
        });
        peak_fds = peak_fds.max(b.fds());
        peak_rss = peak_rss.max(b.rss_kib());
    }
    assert_eq!(flood.len(), 4000);
    assert!(
        peak_fds <= base_fds + FD_SLACK,
        "descriptors: {peak_fds} open at the peak, {base_fds} before the flood"
    );
    let grown = peak_rss.saturating_sub(base_rss);
    assert!(
        grown < RSS_SLACK_KIB,
        "RSS grew by {grown} KiB under the flood (from {base_rss} KiB)"
    );
    // The handshake deadline closes what the flood left open.
    let t = Instant::now();
    while b.fds() > base_fds + 8 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "flood connections still open: {} descriptors, {base_fds} before",
            b.fds()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(flood);
    rt.block_on(async {
        c.keep_alive().await.unwrap();
        assert!(q.read(&ns, 0, data.len()).await.unwrap() == data);
    });
    eprintln!("flood: base {base_fds} fds / {base_rss} KiB, peak {peak_fds} fds / {peak_rss} KiB");
    b.stop();
}

#[test]
fn shutdown_finishes_while_a_host_stops_reading() {
    use nvme_spec::FromZeros;
    use nvme_spec::command::{Sqe, io_opcode};

    let b = Baton::start_with(SMALL_LIMITS);
    let ports = b.ports();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (c, _q, _ns) = rt.block_on(well_behaved_host(ports[0]));
    let base = b.rss_kib();
    // 2 x 64 MiB of reads asked for and none of it read, on one queue without and one with
    // data digests: the reads wait in pool buffers and the output buffer, which stops taking
    // commands at its high-water mark.
    let mut stalled = Vec::new();
    for (qid, digest) in [(2, false), (3, true)] {
        let mut r = raw_io_queue_with(ports[0], &c, qid, digest);
        for cid in 0..64u16 {
            let mut sqe = Sqe::new_zeroed();
            sqe.opcode = io_opcode::READ;
            sqe.cid.set(cid);
            sqe.nsid.set(1);
            sqe.set_lba_range(0, 2048);
            r.command(sqe, 1 << 20);
        }
        stalled.push(r);
    }
    std::thread::sleep(Duration::from_millis(300));
    let grown = b.rss_kib().saturating_sub(base);
    assert!(
        grown < RSS_SLACK_KIB,
        "RSS grew by {grown} KiB with two stalled readers (from {base} KiB)"
    );
    // stop() fails if SIGTERM does not end the process within 20 s.
    b.stop();
    drop(stalled);
}

#[test]
fn ana_states_change_at_run_time_through_baton_ctl() {
    let b = Baton::start();
    let ports = b.ports();
    let token = b._dir.path().join("admin.token");
    let token = token.to_str().unwrap().to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut a, mut qa, _c, mut qc, ns) = two_paths(&ports).await;
        assert_eq!(
            a.identify_controller().await.unwrap().cmic & (1 << 3),
            1 << 3
        );
        let show = off_thread(|| b.cli(&["ctl", "ana", "show"]));
        assert_eq!(
            show.lines().filter(|l| l.contains("optimized")).count(),
            2,
            "group 1 on both controllers:\n{show}"
        );
        let out = off_thread(|| {
            b.cli(&[
                "ctl",
                "ana",
                "set",
                "--controller",
                "1",
                "--token-file",
                &token,
                "inaccessible",
            ])
        });
        assert!(out.contains("inaccessible"), "{out}");
        // I/O through controller 1 fails with the path status; controller 0 serves it.
        match qc.read(&ns, 0, 512).await {
            Err(nvme_target::host::HostError::Status { status, .. }) => {
                assert_eq!(status, nvme_spec::status::ANA_INACCESSIBLE);
            }
            other => panic!("expected the ANA status, got {other:?}"),
        }
        qa.read(&ns, 0, 512).await.unwrap();
        let st = off_thread(|| baton::admin::fetch_status(b.admin).unwrap());
        let entry = st.ana.iter().find(|e| e.controller == 1).unwrap();
        assert_eq!((entry.group, entry.state.as_str()), (1, "inaccessible"));
        assert_eq!(entry.namespaces, vec![format!("{NQN}/1")]);
        assert!(off_thread(|| b.cli(&["status"])).contains("inaccessible"));
        let metrics =
            off_thread(|| baton::admin::call(b.admin, hyper::Method::GET, "/metrics").unwrap());
        let metrics = String::from_utf8(metrics.to_vec()).unwrap();
        for line in [
            "baton_nvme_ana_state{controller=\"1\",group=\"1\",state=\"inaccessible\"} 1",
            "baton_nvme_ana_state{controller=\"1\",group=\"1\",state=\"optimized\"} 0",
            "baton_nvme_ana_state{controller=\"0\",group=\"1\",state=\"optimized\"} 1",
            "baton_nvme_ana_changes_total 1",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} missing");
        }
        // By port ID, back to optimized; I/O flows again.
        off_thread(|| {
            b.cli(&[
                "ctl",
                "ana",
                "set",
                "--port",
                "2",
                "--group",
                "1",
                "--token-file",
                &token,
                "optimized",
            ])
        });
        qc.read(&ns, 0, 512).await.unwrap();
        // Unknown states and groups are refused with the reason.
        for bad in [["--controller", "1", "fast"], ["--group", "7", "change"]] {
            let out = Command::new(env!("CARGO_BIN_EXE_baton"))
                .args(["ctl", "ana", "set", "--admin", &b.admin.to_string()])
                .args(["--token-file", &token])
                .args(if bad[0] == "--group" {
                    vec!["--controller", "0", bad[0], bad[1], bad[2]]
                } else {
                    bad.to_vec()
                })
                .output()
                .unwrap();
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("unknown ANA state") || err.contains("no ANA group 7"),
                "{err}"
            );
        }
    });
    b.stop();
}

/// Connect outcome for host `hostnqn`: `Ok` or the Connect status.
async fn connect_as(port: SocketAddr, hostnqn: &str) -> Result<(), u16> {
    let mut o = HostOptions::new(NQN);
    o.hostnqn = hostnqn.into();
    match HostController::connect(port, o).await {
        Ok(_) => Ok(()),
        Err(nvme_target::host::HostError::Status { status, .. }) => Err(status & 0x7ff),
        Err(e) => panic!("connect: {e}"),
    }
}

#[test]
fn sighup_reloads_allowed_hosts_and_refuses_other_changes() {
    const OTHER: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000cc";
    let b = Baton::start();
    let ports = b.ports();
    let me = HostOptions::new(NQN).hostnqn;
    let path = b._dir.path().join("baton.yaml");
    let original = std::fs::read_to_string(&path).unwrap();
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(b.pid()).unwrap()),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    };
    let token = b._dir.path().join("admin.token");
    let token = token.to_str().unwrap().to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut kept = HostController::connect(ports[0], HostOptions::new(NQN))
            .await
            .unwrap();
        // Only OTHER is allowed now.
        std::fs::write(
            &path,
            original.replace(
                "allow_any_host: true",
                &format!("allow_any_host: false\n    allowed_hosts: [\"{OTHER}\"]"),
            ),
        )
        .unwrap();
        hup();
        let t = Instant::now();
        while connect_as(ports[1], &me).await.is_ok() {
            assert!(t.elapsed() < Duration::from_secs(10), "reload not applied");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            connect_as(ports[1], &me).await,
            Err(nvme_spec::status::CONNECT_INVALID_HOST)
        );
        connect_as(ports[1], OTHER).await.unwrap();
        // The association made before the reload stays.
        kept.keep_alive().await.unwrap();
        // A change that cannot be applied while running: refused, nothing changes, the
        // process lives on.
        std::fs::write(
            &path,
            original.replace("stripe_size: 64KiB", "stripe_size: 32KiB"),
        )
        .unwrap();
        hup();
        // Signals sent close together may merge into one: let this one be handled first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A later reload that only changes hosts applies: once it shows, the refused one was
        // handled before it (signals are handled in order) and must have changed nothing
        // (its allow_any_host: true would admit everyone).
        const THIRD: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000dd";
        std::fs::write(
            &path,
            original.replace(
                "allow_any_host: true",
                &format!("allow_any_host: false\n    allowed_hosts: [\"{OTHER}\", \"{THIRD}\"]"),
            ),
        )
        .unwrap();
        hup();
        let t = Instant::now();
        while connect_as(ports[0], THIRD).await.is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "second reload not applied"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            connect_as(ports[0], &me).await,
            Err(nvme_spec::status::CONNECT_INVALID_HOST),
            "the refused reload changed nothing"
        );
        // Hosts through baton ctl.
        let out = off_thread(|| {
            b.cli(&[
                "ctl",
                "host",
                "add",
                "--subsystem",
                NQN,
                &me,
                "--token-file",
                &token,
            ])
        });
        assert!(out.contains("allowed"), "{out}");
        connect_as(ports[0], &me).await.unwrap();
        off_thread(|| {
            b.cli(&[
                "ctl",
                "host",
                "remove",
                "--subsystem",
                NQN,
                OTHER,
                "--token-file",
                &token,
            ])
        });
        assert_eq!(
            connect_as(ports[0], OTHER).await,
            Err(nvme_spec::status::CONNECT_INVALID_HOST)
        );
    });
    b.stop();
}

#[test]
fn namespaces_change_at_run_time_through_baton_ctl_and_sighup() {
    let b = Baton::start();
    let ports = b.ports();
    let token = b.token_file();
    let original = std::fs::read_to_string(b.config_path()).unwrap();
    let ctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["ctl", "namespace"])
            .args(args)
            .args(["--subsystem", NQN, "--admin", &b.admin.to_string()])
            .args(["--token-file", &token])
            .output()
            .unwrap()
    };
    let namespaces = || {
        let st = baton::admin::fetch_status(b.admin).unwrap();
        st.subsystems[0].namespaces.clone()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut a, mut qa, _c, mut qc, _) = two_paths(&ports).await;
        let out = off_thread(|| ctl(&["add", "--nsid", "4", "--volume", "spare"]));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(a.active_namespaces().await.unwrap(), [1, 4]);
        let ns4 = a.namespace(4).await.unwrap();
        assert_eq!(ns4.block_size, 4096);
        // Both controller threads serve it.
        let data = baton_tests::pattern(64 << 10, 4);
        qa.write(&ns4, 0, &data).await.unwrap();
        assert_eq!(qc.read(&ns4, 0, data.len()).await.unwrap(), data);
        assert_eq!(
            off_thread(namespaces),
            [(1, "v0".to_owned()), (4, "spare".to_owned())]
        );
        let metrics =
            off_thread(|| baton::admin::call(b.admin, hyper::Method::GET, "/metrics").unwrap());
        let metrics = String::from_utf8(metrics.to_vec()).unwrap();
        let line =
            format!("baton_namespace_ops_total{{subsystem=\"{NQN}\",nsid=\"4\",op=\"write\"}} 1");
        assert!(metrics.lines().any(|l| l == line), "{line} missing");
        // Refused with the reason: an exported volume, a taken ID, an unknown volume, no
        // such subsystem.
        for (args, why) in [
            (["--nsid", "5", "--volume", "v0"], "already exported"),
            (["--nsid", "4", "--volume", "spare"], "duplicate nsid 4"),
            (["--nsid", "5", "--volume", "nope"], "unknown volume"),
        ] {
            let mut full = vec!["add"];
            full.extend(args);
            let out = off_thread(|| ctl(&full));
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(why), "{args:?}: {err}");
        }
        let out = off_thread(|| ctl(&["remove", "--nsid", "9"]));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no namespace 9"));
        // Removed: new commands fail with Invalid Namespace.
        let out = off_thread(|| ctl(&["remove", "--nsid", "4"]));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        match qa.read(&ns4, 0, 4096).await {
            Err(nvme_target::host::HostError::Status { status, .. }) => {
                assert_eq!(status & 0x7ff, nvme_spec::status::INVALID_NS);
            }
            other => panic!("expected Invalid Namespace, got {other:?}"),
        }
        assert_eq!(a.active_namespaces().await.unwrap(), [1]);

        // SIGHUP makes the file's namespaces the ones in force: 4 added, then removed.
        b.reload(&original.replace(
            "namespaces: [{nsid: 1, volume: v0}]",
            "namespaces: [{nsid: 1, volume: v0}, {nsid: 4, volume: spare}]",
        ));
        let t = Instant::now();
        while a.active_namespaces().await.unwrap() != [1, 4] {
            assert!(t.elapsed() < Duration::from_secs(10), "reload not applied");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The data written before is still on the volume.
        assert_eq!(qc.read(&ns4, 0, data.len()).await.unwrap(), data);
        b.reload(&original);
        let t = Instant::now();
        while a.active_namespaces().await.unwrap() != [1] {
            assert!(t.elapsed() < Duration::from_secs(10), "reload not applied");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Namespace 1 served throughout.
        qa.read(&a.namespace(1).await.unwrap(), 0, 512)
            .await
            .unwrap();
    });
    b.stop();
}

#[test]
fn subsystems_change_at_run_time_through_baton_ctl_and_sighup() {
    const ADDED: &str = "nqn.2026-11.io.baton:added";
    let b = Baton::start();
    let ports = b.ports();
    let token = b.token_file();
    let original = std::fs::read_to_string(b.config_path()).unwrap();
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_baton"))
            .arg("ctl")
            .args(args)
            .args(["--admin", &b.admin.to_string(), "--token-file", &token])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let listed = || {
        let st = baton::admin::fetch_status(b.admin).unwrap();
        st.subsystems
            .iter()
            .map(|s| s.nqn.clone())
            .collect::<Vec<_>>()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (ok, out) = off_thread(|| ctl(&["subsystem", "add", ADDED, "--allow-any-host"]));
        assert!(ok, "{out}");
        let (ok, out) = off_thread(|| {
            ctl(&["namespace", "add", "--subsystem", ADDED, "--nsid", "1", "--volume", "spare"])
        });
        assert!(ok, "{out}");
        assert_eq!(off_thread(listed), [NQN, ADDED]);
        let (mut c, mut q, ns) = well_behaved_host_of(ports[1], ADDED).await;
        let data = baton_tests::pattern(16 << 10, 9);
        q.write(&ns, 0, &data).await.unwrap();
        assert_eq!(q.read(&ns, 0, data.len()).await.unwrap(), data);
        // The same NQN twice, or an invalid one, is refused.
        let (ok, out) = off_thread(|| ctl(&["subsystem", "add", ADDED]));
        assert!(!ok && out.contains("duplicate subsystem"), "{out}");
        let (ok, out) = off_thread(|| ctl(&["subsystem", "add", "nqn.2014-08.org.nvmexpress.discovery"]));
        assert!(!ok, "{out}");
        // Removed: the host's association ends; the spare volume can be exported again.
        let (ok, out) = off_thread(|| ctl(&["subsystem", "remove", ADDED]));
        assert!(ok, "{out}");
        let t = Instant::now();
        while c.keep_alive().await.is_ok() {
            assert!(t.elapsed() < Duration::from_secs(10), "association not torn down");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(off_thread(listed), [NQN]);
        let (ok, out) = off_thread(|| ctl(&["subsystem", "remove", ADDED]));
        assert!(!ok && out.contains("no subsystem"), "{out}");

        // SIGHUP: a subsystem in the file is added with its namespace, then removed again.
        b.reload(&format!(
            "{original}  - nqn: {ADDED}\n    allow_any_host: true\n    namespaces: [{{nsid: 3, volume: spare}}]\n"
        ));
        let t = Instant::now();
        while off_thread(listed).len() != 2 {
            assert!(t.elapsed() < Duration::from_secs(10), "reload not applied");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut c = HostController::connect(ports[0], HostOptions::new(ADDED)).await.unwrap();
        assert_eq!(c.active_namespaces().await.unwrap(), [3]);
        let ns = c.namespace(3).await.unwrap();
        c.set_num_queues(1).await.unwrap();
        let mut q = c.connect_io_queue(1).await.unwrap();
        // The data written through the first subsystem is on the volume.
        assert_eq!(q.read(&ns, 0, data.len()).await.unwrap(), data);
        b.reload(&original);
        let t = Instant::now();
        while off_thread(listed).len() != 1 {
            assert!(t.elapsed() < Duration::from_secs(10), "reload not applied");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    b.stop();
}

/// A host controller of subsystem `nqn` on `addr` with one I/O queue, and its namespace 1.
async fn well_behaved_host_of(addr: SocketAddr, nqn: &str) -> (HostController, Queue, Namespace) {
    let mut c = HostController::connect(addr, HostOptions::new(nqn))
        .await
        .unwrap();
    c.set_num_queues(1).await.unwrap();
    let q = c.connect_io_queue(1).await.unwrap();
    let ns = c.namespace(1).await.unwrap();
    (c, q, ns)
}
