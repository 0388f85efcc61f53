//! Every listener under a flood: thousands of idle connections and a stream of new ones on
//! the NVMe/TCP ports, discovery, the stream control port, the HTTP face and the admin API,
//! while well-behaved clients keep working. The real `baton` binary, small limits.
// An integration test crate: every function in it is a test.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nvme_target::host::{HostController, HostOptions};
use stream::client::StreamClient;

use common::{Serve, free_port};

const NQN: &str = "nqn.2026-11.io.baton:limits";
/// Connections each NVMe/TCP and stream listener admits.
const CAP: usize = 64;
/// Admin API cap.
const ADMIN_CAP: usize = 8;

/// Open descriptors and resident memory (KiB) of a process.
fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (fds, rss)
}

fn raise_own_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

#[test]
fn floods_on_every_listener_leave_good_clients_working_and_memory_bounded() {
    raise_own_descriptor_limit();
    let dir = tempfile::tempdir().unwrap();
    let ip = "127.0.0.1";
    let admin: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
    let control: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
    let http: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
    let discovery: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
    let cfg = format!(
        "data_dir: {d}\ncontrollers: {{count: 2, pin: false}}\n\
         nvme_tcp: {{base_port: 0, discovery_port: {dp}}}\n\
         admin: {{address: \"{admin}\"}}\nlogging: {{level: error}}\n\
         limits: {{nvme_tcp_connections: {CAP}, stream_connections: {CAP}, admin_connections: {ADMIN_CAP}, handshake_timeout_ms: 1000}}\n\
         devices:\n  - {{name: r0, kind: ram, size: 32MiB}}\n  - {{name: c0, kind: ram, size: 64MiB}}\n\
         volumes:\n  - {{name: v0, devices: [r0]}}\n  - {{name: content, devices: [c0]}}\n\
         subsystems:\n  - nqn: {NQN}\n    allow_any_host: true\n    namespaces: [{{nsid: 1, volume: v0}}]\n\
         stream: {{volume: content, control_port: {cp}, http_port: {hp}, data_port_base: 0, block_size: 64KiB}}\n",
        d = dir.path().display(),
        dp = discovery.port(),
        cp = control.port(),
        hp = http.port(),
    );
    let path = dir.path().join("baton.yaml");
    std::fs::write(&path, cfg).unwrap();
    let child = Serve::start(&path, admin, &[control]);
    let pid = child.0.id();
    let ports: Vec<SocketAddr> = baton::admin::fetch_status(admin)
        .unwrap()
        .controllers
        .iter()
        .map(|c| c.nvme_tcp.parse().unwrap())
        .collect();
    let (base_fds, base_rss) = usage(pid);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Good clients, established before the flood.
        // The flood's connects retry (a second each) once the listeners' backlogs are full,
        // so the flood can last longer than the default keep-alive timeout, and this host
        // sends nothing meanwhile: its timeout outlasts the flood.
        let mut opts = HostOptions::new(NQN);
        opts.kato_ms = 60_000;
        let mut host = HostController::connect(ports[0], opts).await.unwrap();
        host.set_num_queues(1).await.unwrap();
        let mut q = host.connect_io_queue(1).await.unwrap();
        let ns = host.namespace(1).await.unwrap();
        let s = StreamClient::new(control);
        let item: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        s.put("flood.bin", item.len() as u64, &item[..], |_| {})
            .await
            .unwrap();

        // The flood: 500 idle connections on each listener (far over each cap).
        let targets = [ports[0], ports[1], discovery, control, http, admin];
        let mut idle = Vec::new();
        for addr in targets {
            for _ in 0..500 {
                if let Ok(c) = tokio::net::TcpStream::connect(addr).await {
                    idle.push(c);
                }
            }
        }
        assert!(
            idle.len() >= 2000,
            "the flood opened {} connections",
            idle.len()
        );

        // The established clients keep working during it.
        let data = vec![0xa5u8; 65536];
        for i in 0..200u64 {
            q.write(&ns, i * 128, &data).await.unwrap();
            assert!(q.read(&ns, i * 128, data.len()).await.unwrap() == data);
        }
        let (fds, rss) = usage(pid);
        // Each listener holds at most its cap of the flood; everything else was refused.
        let caps = 5 * CAP + ADMIN_CAP;
        assert!(
            fds <= base_fds + caps + 16,
            "{fds} descriptors open (baseline {base_fds}, caps {caps})"
        );
        assert!(
            rss <= base_rss + 64 * 1024,
            "RSS grew from {base_rss} KiB to {rss} KiB under the flood"
        );

        // Idle connections are closed after the handshake timeout, so new clients get in.
        let t = Instant::now();
        let mut out = Vec::new();
        loop {
            out.clear();
            match s
                .fetch("flood.bin", 0, None, None, &mut out, |_, _| {})
                .await
            {
                Ok(_) => break,
                Err(e) => assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "a new stream client never got in: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(out == item, "byte-exact");
        let mut fresh = loop {
            match HostController::connect(ports[1], HostOptions::new(NQN)).await {
                Ok(h) => break h,
                Err(e) => assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "a new NVMe/TCP host never got in: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        fresh.set_num_queues(1).await.unwrap();
        let mut q2 = fresh.connect_io_queue(1).await.unwrap();
        assert!(q2.read(&ns, 0, data.len()).await.unwrap() == data);
        loop {
            // The CLI's client runs its own runtime: call it off this one.
            let up = std::thread::spawn(move || baton::admin::fetch_status(admin).is_ok());
            if up.join().unwrap() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the admin API never answered"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A request head dribbled a byte at a time is cut at the handshake timeout (1 s),
        // not served for as long as the bytes keep coming.
        let mut slow = tokio::net::TcpStream::connect(admin).await.unwrap();
        let started = Instant::now();
        let head = b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut cut = false;
        for b in head {
            use tokio::io::AsyncWriteExt;
            if slow.write_all(&[*b]).await.is_err() {
                cut = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !cut {
            use tokio::io::AsyncReadExt;
            let mut rest = Vec::new();
            let n = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
            cut = matches!(n, Ok(Ok(_)) | Ok(Err(_)));
            let text = String::from_utf8_lossy(&rest);
            assert!(!text.contains(" 200 "), "a dribbled head was served: {text}");
        }
        assert!(
            cut,
            "a head dribbled for {:?} was not cut",
            started.elapsed()
        );
        // The server closed the idle flood: its descriptors return to the baseline.
        let t = Instant::now();
        loop {
            let (fds, _) = usage(pid);
            if fds <= base_fds + 16 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{fds} descriptors still open (baseline {base_fds})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(idle);
    });
}
