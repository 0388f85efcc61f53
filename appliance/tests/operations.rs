//! Operations: every metric the dashboard and alert rules query is exported by a running
//! appliance (`monitoring.rs` evaluates them through a real Prometheus); status, admin
//! actions, signals and readiness.
// An integration test crate: every function in it is a test.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nvme_target::host::{HostController, HostOptions};
use stream::client::StreamClient;

use common::{Serve, free_port};

const NQN: &str = "nqn.2026-11.io.baton:ops";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Baton {
    _p: Serve,
    admin: SocketAddr,
    control: SocketAddr,
    _dir: tempfile::TempDir,
}

fn start_baton() -> Baton {
    let dir = tempfile::tempdir().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = format!(
        "data_dir: {d}\ncontrollers: {{count: 2, pin: false}}\nnvme_tcp: {{base_port: 0, discovery_port: 0}}\n\
         admin: {{address: \"{admin}\"}}\nlogging: {{level: warn}}\n\
         devices:\n  - {{name: r0, kind: ram, size: 64MiB}}\n  - {{name: c0, kind: ram, size: 64MiB}}\n\
         volumes:\n  - {{name: v0, devices: [r0]}}\n  - {{name: content, devices: [c0]}}\n\
         subsystems:\n  - nqn: {NQN}\n    allow_any_host: true\n    namespaces: [{{nsid: 1, volume: v0}}]\n\
         stream: {{volume: content, control_port: {cp}, http_port: null, data_port_base: 0, block_size: 64KiB}}\n",
        d = dir.path().display(),
        cp = control.port()
    );
    let path = dir.path().join("baton.yaml");
    std::fs::write(&path, cfg).unwrap();
    let p = Serve::start(&path, admin, &[control]);
    Baton {
        _p: p,
        admin,
        control,
        _dir: dir,
    }
}

/// Some NVMe/TCP I/O through both controllers and one stream.
fn drive(b: &Baton) {
    let ports = common::nvme_ports(b.admin);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for p in &ports {
            let mut c = HostController::connect(*p, HostOptions::new(NQN))
                .await
                .unwrap();
            c.set_num_queues(1).await.unwrap();
            let mut q = c.connect_io_queue(1).await.unwrap();
            let ns = c.namespace(1).await.unwrap();
            q.write(&ns, 0, &[0x5a; 65536]).await.unwrap();
            q.read(&ns, 0, 65536).await.unwrap();
        }
        let s = StreamClient::new(b.control);
        let d = vec![7u8; 300_000];
        s.put("ops.bin", d.len() as u64, &d[..], |_| {})
            .await
            .unwrap();
        let mut out = Vec::new();
        s.fetch("ops.bin", 0, None, None, &mut out, |_, _| {})
            .await
            .unwrap();
        assert!(out == d);
    });
}

/// Metric names (`baton_*`) in Prometheus expressions, with histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("baton_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if boundary {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?;
            let kind = it.next()?;
            Some(if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_owned()
            })
        })
        .collect()
}

#[test]
fn every_dashboard_and_alert_query_names_an_exported_metric() {
    let b = start_baton();
    drive(&b);
    let metrics = String::from_utf8(
        baton::admin::call(b.admin, hyper::Method::GET, "/metrics")
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let have = exported(&metrics);
    let dashboard =
        std::fs::read_to_string(repo().join("config/grafana/dashboards/baton.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut exprs = Vec::new();
    for panel in json["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 15, "the dashboard has panels with queries");
    let alerts = std::fs::read_to_string(repo().join("config/prometheus/alerts.yml")).unwrap();
    let mut wanted = BTreeSet::new();
    for e in exprs.iter().map(String::as_str).chain([alerts.as_str()]) {
        wanted.extend(metric_names(e));
    }
    let missing: Vec<_> = wanted.iter().filter(|m| !have.contains(*m)).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
    // Label sets stay bounded: no per-host or per-address labels.
    assert!(!metrics.contains("hostnqn=") && !metrics.contains("peer="));
}

/// Status line and body of one raw HTTP/1.1 request.
fn raw_http(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.lines().next().unwrap_or_default().to_owned();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn admin_actions_need_the_token_and_refuse_foreign_pages() {
    let b = start_baton();
    let token = baton::admin::auth::read_token_file(&b._dir.path().join("admin.token")).unwrap();
    let post = |host: &str, extra: &str| {
        raw_http(
            b.admin,
            &format!(
                "POST /api/v1/controllers/1/stop-streams HTTP/1.1\r\nHost: {host}\r\n{extra}\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
    };
    let me = b.admin.to_string();
    let bearer = format!("Authorization: Bearer {token}\r\n");
    // No token; a wrong token.
    assert!(post(&me, "").0.contains(" 401 "), "{:?}", post(&me, ""));
    let wrong = "Authorization: Bearer 0000000000000000000000\r\n";
    assert!(post(&me, wrong).0.contains(" 401 "));
    // DNS rebinding (a name in Host) and a cross-origin form post, even with the token.
    assert!(post("attacker.example:9440", &bearer).0.contains(" 403 "));
    let origin = format!("{bearer}Origin: http://attacker.example\r\n");
    assert!(post(&me, &origin).0.contains(" 403 "));
    // Read-only endpoints stay open without a token.
    let (st, _) = raw_http(
        b.admin,
        &format!("GET /api/v1/status HTTP/1.1\r\nHost: {me}\r\nConnection: close\r\n\r\n"),
    );
    assert!(st.contains(" 200 "), "{st}");
    // Nothing was stopped by the refused requests; the real one acts.
    let status = baton::admin::fetch_status(b.admin).unwrap();
    assert!(!status.controllers.is_empty());
    let (st, body) = post(&me, &bearer);
    assert!(st.contains(" 200 "), "{st} {body}");
    // The CLI finds the token through --config.
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "ctl",
            "stop-streams",
            "--controller",
            "0",
            "--admin",
            &me,
            "--config",
        ])
        .arg(b._dir.path().join("baton.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn status_shows_liveness_stream_ports_store_usage_and_host_paths() {
    use baton::admin::status::{Liveness, WorkerState};
    let b = start_baton();
    drive(&b);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let st = baton::admin::fetch_status(b.admin).unwrap();
    let port1: SocketAddr = st.controllers[1].nvme_tcp.parse().unwrap();
    // A host path through controller 1, kept while the status is read.
    let _host = rt.block_on(async {
        let mut c = HostController::connect(port1, HostOptions::new(NQN))
            .await
            .unwrap();
        c.keep_alive().await.unwrap();
        c
    });
    let token = baton::admin::auth::read_token_file(&b._dir.path().join("admin.token")).unwrap();
    baton::admin::call_with_token(
        b.admin,
        hyper::Method::POST,
        "/api/v1/controllers/1/stop-streams",
        Some(&token),
    )
    .unwrap();
    let st = baton::admin::fetch_status(b.admin).unwrap();
    assert_eq!(st.controllers.len(), 2);
    for c in &st.controllers {
        assert_eq!(c.reactor, Liveness::Up, "{c:?}");
    }
    assert_eq!(st.controllers[0].stream_worker, WorkerState::Up);
    assert_eq!(st.controllers[1].stream_worker, WorkerState::Stopped);
    let stream = st.stream.as_ref().expect("stream service status");
    assert_eq!(stream.control, b.control.to_string());
    assert_eq!(stream.data_ports.len(), 2);
    assert!(stream.data_ports.iter().all(|&p| p != 0));
    assert!(stream.store_used >= 300_000, "{stream:?}");
    assert_eq!(stream.store_free, stream.store_capacity - stream.store_used);
    let hosts = &st.subsystems[0].hosts;
    let path = hosts
        .iter()
        .find(|h| h.controller == 1)
        .expect("the host path through controller 1");
    assert_eq!(path.path, port1.to_string());
    // The host's own end of that path: this test's connection, from an ephemeral port.
    let host: SocketAddr = path.host_address.parse().expect("a host address");
    assert!(
        host.ip().is_loopback() && host.port() != 0 && host != port1,
        "{host}"
    );
    // The CLI shows the same, as a table and as JSON.
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
        cmd.args(["status", "--admin", &b.admin.to_string()]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run(false);
    for needle in [
        "STOPPED".to_owned(),
        stream.data_ports[1].to_string(),
        b.control.to_string(),
        port1.to_string(),
        "free ".to_owned(),
    ] {
        assert!(table.contains(&needle), "{needle} missing in\n{table}");
    }
    let json: baton::admin::status::Status = serde_json::from_str(&run(true)).unwrap();
    assert_eq!(json.controllers[1].stream_worker, WorkerState::Stopped);
    assert_eq!(json.stream.unwrap().data_ports, stream.data_ports);
    // The exporter agrees.
    let metrics = String::from_utf8(
        baton::admin::call(b.admin, hyper::Method::GET, "/metrics")
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(metrics.contains("baton_stream_worker_up{controller=\"1\"} 0"));
    assert!(metrics.contains("baton_stream_worker_up{controller=\"0\"} 1"));
    let paths = format!("baton_subsystem_host_paths{{subsystem=\"{NQN}\",controller=\"1\"}} ");
    let n: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&paths))
        .expect("host paths of controller 1")
        .parse()
        .unwrap();
    assert!(n >= 1, "the kept host connection is a path");
}

#[test]
fn sighup_does_not_kill_the_appliance() {
    let b = start_baton();
    nix::sys::signal::kill(b._p.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        baton::admin::fetch_status(b.admin).is_ok(),
        "still serving after SIGHUP"
    );
}

#[test]
fn tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = dir.path().join("baton.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir: {d}\ncontrollers: {{count: 1}}\nnvme_tcp: {{base_port: 0, discovery_port: null}}\n\
             admin: {{address: \"{admin}\"}}\nlogging: {{level: warn}}\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let p = Serve::start_with(&cfg, admin, &[], |c| {
        c.env("NOTIFY_SOCKET", &sock_path);
    });
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1 arrives");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means serving: the admin API answers at once.
    assert!(baton::admin::fetch_status(admin).is_ok());
    nix::sys::signal::kill(p.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let n = sock.recv(&mut buf).expect("STOPPING=1 arrives");
    assert_eq!(&buf[..n], b"STOPPING=1");
}
