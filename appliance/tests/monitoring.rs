//! Monitoring as an admin runs it: promtool checks the shipped Prometheus configuration and
//! runs the alert rules' unit tests (every alert fires on synthetic series and resolves); a
//! real Prometheus scrapes an appliance under block and stream load, and every dashboard
//! panel query and every alert expression, evaluated through its HTTP API, returns series
//! with the labels the panel or alert names.
//!
//! Both need Debian's `prometheus` package, which `tests/run unit` installs before it runs
//! the ignored tests (`--include-ignored`); run alone without it, they fail with a message
//! that names the package.
// An integration test crate: every function in it is a test.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nvme_target::host::{HostController, HostOptions};
use stream::client::StreamClient;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn prometheus_dir() -> PathBuf {
    repo().join("config/prometheus")
}

/// Runs promtool, failing with its output.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .expect("promtool (Debian package prometheus; tests/install-packages prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The alert rules: `(name, expr)`, in file order.
fn alerts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(prometheus_dir().join("alerts.yml")).unwrap();
    let doc: serde_json::Value = serde_norway::from_str(&text).unwrap();
    doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_owned(),
                r["expr"].as_str().unwrap().trim().to_owned(),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs Debian's prometheus package (tests/run installs it and runs ignored tests)"]
fn every_alert_fires_and_resolves_in_its_promtool_unit_test() {
    promtool(&["check", "config", "prometheus.yml"]);
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    let names: BTreeSet<String> = alerts().into_iter().map(|(n, _)| n).collect();
    assert!(
        checked.contains(&format!("{} rules found", names.len())),
        "{checked}"
    );
    promtool(&["test", "rules", "alerts.test.yml"]);
    // Every alert has a test that expects it firing and one that expects it resolved.
    let text = std::fs::read_to_string(prometheus_dir().join("alerts.test.yml")).unwrap();
    let doc: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let mut fires = BTreeSet::new();
    let mut resolves = BTreeSet::new();
    for t in doc["tests"].as_array().unwrap() {
        for a in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = a["alertname"].as_str().unwrap().to_owned();
            if a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()) {
                fires.insert(name);
            } else {
                resolves.insert(name);
            }
        }
    }
    assert_eq!(fires, names, "alerts with a firing test");
    assert_eq!(resolves, names, "alerts with a resolving test");
    // And a runbook entry in the README.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let runbook = readme
        .split_once("### Alerts and runbook")
        .expect("README has an \"Alerts and runbook\" section")
        .1;
    for n in &names {
        assert!(
            runbook.contains(&format!("| `{n}` |")),
            "no runbook entry for {n}"
        );
    }
}

/// A child process killed when dropped.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const NQN: &str = "nqn.2026-11.io.baton:monitoring";

/// A running appliance with two controllers, a file-backed namespace (zero-copy reads) and
/// the stream service with its HTTP face.
struct Appliance {
    _serve: common::Serve,
    dir: tempfile::TempDir,
    admin: SocketAddr,
    control: SocketAddr,
    http: SocketAddr,
}

fn start_appliance() -> Appliance {
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_addr();
    let control = common::free_addr();
    let http = common::free_addr();
    let cfg = format!(
        "data_dir: {d}\ncontrollers: {{count: 2, pin: false}}\nnvme_tcp: {{base_port: 0, discovery_port: 0}}\n\
         admin: {{address: \"{admin}\"}}\nlogging: {{level: warn}}\n\
         devices:\n  - {{name: f0, kind: file, path: f0.img, size: 64MiB}}\n  - {{name: c0, kind: ram, size: 64MiB}}\n\
         volumes:\n  - {{name: v0, devices: [f0]}}\n  - {{name: content, devices: [c0]}}\n\
         subsystems:\n  - nqn: {NQN}\n    allow_any_host: true\n    namespaces: [{{nsid: 1, volume: v0}}]\n\
         stream: {{volume: content, control_port: {cp}, http_port: {hp}, data_port_base: 0, block_size: 64KiB}}\n",
        d = dir.path().display(),
        cp = control.port(),
        hp = http.port(),
    );
    let path = dir.path().join("baton.yaml");
    std::fs::write(&path, cfg).unwrap();
    let serve = common::Serve::start(&path, admin, &[control, http]);
    Appliance {
        _serve: serve,
        dir,
        admin,
        control,
        http,
    }
}

/// Prometheus on a temporary directory with the shipped configuration and rules, scraping
/// `target` every second and evaluating the rules every second.
fn start_prometheus(target: SocketAddr) -> (Proc, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        prometheus_dir().join("alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    let shipped = std::fs::read_to_string(prometheus_dir().join("prometheus.yml")).unwrap();
    assert!(shipped.contains("127.0.0.1:9440") && shipped.contains("scrape_interval: 5s"));
    let cfg = shipped
        .replace("127.0.0.1:9440", &target.to_string())
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
        .replace("evaluation_interval: 5s", "evaluation_interval: 1s");
    std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
    let web = common::free_addr();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package prometheus; tests/install-packages prometheus)");
    (Proc(child), web, dir)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.') {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

/// Body of `GET path`, or `None` if the server is not answering (yet).
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let out = String::from_utf8_lossy(&out).into_owned();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// The instant vector `expr` evaluates to now; panics if Prometheus rejects the query.
fn query(web: SocketAddr, expr: &str) -> Vec<serde_json::Value> {
    let body = http_get(
        web,
        &format!("/api/v1/query?query={}", percent_encode(expr)),
    )
    .unwrap_or_else(|| panic!("no answer from Prometheus for {expr}"));
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{e}: not JSON from Prometheus for {expr}: {body}"));
    assert_eq!(v["status"], "success", "{expr}: {body}");
    assert_eq!(v["data"]["resultType"], "vector", "{expr}");
    v["data"]["result"].as_array().unwrap().clone()
}

/// Waits (bounded) until `expr` returns a sample for which `ok` holds.
fn wait_for(web: SocketAddr, expr: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if http_get(web, "/-/ready").is_some() && query(web, expr).iter().any(&ok) {
            return;
        }
        assert!(Instant::now() < deadline, "Prometheus never saw {expr}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

fn positive(sample: &serde_json::Value) -> bool {
    value(sample) > 0.0
}

/// The label names every aggregation of `expr` keeps (`by (...)`), without `le`, which
/// `histogram_quantile` consumes; `None` if `expr` does not aggregate.
fn kept_labels(expr: &str) -> Option<Vec<BTreeSet<String>>> {
    let mut sets = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find(" by (") {
        let after = &rest[at + 5..];
        let end = after.find(')').unwrap();
        sets.push(
            after[..end]
                .split(',')
                .map(|l| l.trim().to_owned())
                .filter(|l| l != "le")
                .collect(),
        );
        rest = &after[end..];
    }
    (!sets.is_empty()).then_some(sets)
}

/// Asserts that `expr` returns at least one series and that every series carries `labels`.
fn assert_series(web: SocketAddr, what: &str, expr: &str, labels: &BTreeSet<String>) {
    let result = query(web, expr);
    assert!(!result.is_empty(), "{what}: `{expr}` returned nothing");
    for s in &result {
        let metric = s["metric"].as_object().unwrap();
        for l in labels {
            assert!(
                metric
                    .get(l)
                    .and_then(|v| v.as_str())
                    .is_some_and(|v| !v.is_empty()),
                "{what}: `{expr}` returned a series without `{l}`: {s}"
            );
        }
    }
}

/// Keeps NVMe/TCP I/O going through both controllers (zero-copy reads, R2T writes) and
/// streams (framed and HTTP) until `stop` is set; keeps the host connections open.
fn load(a: &Appliance, stop: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let ports = common::nvme_ports(a.admin);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut hosts = Vec::new();
        for p in &ports {
            let mut c = HostController::connect(*p, HostOptions::new(NQN))
                .await
                .unwrap();
            c.set_num_queues(1).await.unwrap();
            let q = c.connect_io_queue(1).await.unwrap();
            let ns = c.namespace(1).await.unwrap();
            hosts.push((c, q, ns));
        }
        let client = StreamClient::new(a.control);
        let content = vec![7u8; 600_000];
        client
            .put("monitoring.bin", content.len() as u64, &content[..], |_| {})
            .await
            .unwrap();
        let data = vec![0x5a; 128 << 10];
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for (c, q, ns) in &mut hosts {
                q.write(ns, round % 64 * 256, &data).await.unwrap();
                for i in 0..8 {
                    q.submit_read(ns, i * 256, 128 << 10).unwrap();
                }
                for _ in 0..8 {
                    let done = q.next().await.unwrap();
                    assert_eq!(done.status(), 0);
                    q.release(done.cid);
                }
                c.keep_alive().await.unwrap();
            }
            let mut out = Vec::new();
            client
                .fetch("monitoring.bin", 0, None, None, &mut out, |_, _| {})
                .await
                .unwrap();
            assert!(out == content);
            let body = tokio::task::spawn_blocking({
                let http = a.http;
                move || http_get(http, "/content/monitoring.bin")
            })
            .await
            .unwrap()
            .expect("HTTP face answers");
            assert_eq!(body.len(), content.len());
            round += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
#[ignore = "needs Debian's prometheus package (tests/run installs it and runs ignored tests)"]
fn every_panel_and_alert_expression_returns_labelled_series_from_a_real_prometheus() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let a = start_appliance();
    let (_prom, web, _prom_dir) = start_prometheus(a.admin);
    wait_for(web, "up{job=\"baton\"} == 1", |_| true);

    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let busy = s.spawn(|| load(&a, &stop));
        // Rates come from at least two scrapes taken while the load runs.
        for expr in [
            "sum by (instance) (rate(baton_nvme_commands_total{kind=\"read\"}[1m]))",
            "sum by (instance) (rate(baton_nvme_commands_total{kind=\"write\"}[1m]))",
            "sum by (instance) (rate(baton_nvme_latency_seconds_count{op=\"read\"}[1m]))",
            "sum by (instance) (rate(baton_stream_bytes_total[1m]))",
            "sum by (instance) (rate(baton_stream_sessions_completed_total[1m]))",
            "min by (instance) (baton_subsystem_host_paths)",
        ] {
            wait_for(web, expr, positive);
        }
        stop.store(true, Ordering::Relaxed);
        busy.join().unwrap();
    });

    // Every dashboard panel: `$instance` is "All" (the regex `.*`), `$__rate_interval`
    // one minute (several scrapes at 1 s).
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("config/grafana/dashboards/baton.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let legend = t["legendFormat"].as_str().unwrap_or_default();
            assert!(
                legend.contains("{{instance}}"),
                "{title}: the legend must tell appliances apart: {legend}"
            );
            let sets =
                kept_labels(expr).unwrap_or_else(|| panic!("{title}: `{expr}` aggregates nothing"));
            for set in &sets {
                assert!(
                    set.contains("instance"),
                    "{title}: `{expr}` drops `instance`"
                );
            }
            // Placeholders in the legend name labels the series must carry.
            let mut labels = sets[0].clone();
            labels.extend(
                legend
                    .split("{{")
                    .skip(1)
                    .filter_map(|p| p.split_once("}}"))
                    .map(|(l, _)| l.trim().to_owned()),
            );
            let concrete = expr
                .replace("$instance", ".*")
                .replace("$__rate_interval", "1m");
            assert_series(web, title, &concrete, &labels);
            checked += 1;
        }
    }
    assert!(checked >= 40, "{checked} panel queries");

    // Every alert expression. Its first operand must carry every label its summary names
    // (so the summary is true of the series that fire it); on a healthy appliance most
    // conditions are false, so each operand is evaluated without its threshold
    // comparison: the series the condition is tested on must exist.
    let text = std::fs::read_to_string(prometheus_dir().join("alerts.yml")).unwrap();
    let doc: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let rules: Vec<&serde_json::Value> = doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), alerts().len());
    for r in rules {
        let name = r["alert"].as_str().unwrap();
        let expr = r["expr"].as_str().unwrap();
        let summary = r["annotations"]["summary"].as_str().unwrap();
        let named: BTreeSet<String> = summary
            .split("$labels.")
            .skip(1)
            .map(|p| {
                p.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect();
        assert!(
            named.contains("instance"),
            "{name}: summary names the appliance"
        );
        // The whole expression is valid and evaluates.
        query(web, expr);
        for (i, operand) in operands(expr).iter().enumerate() {
            let base = without_threshold(operand);
            let labels = if i == 0 {
                named.clone()
            } else {
                BTreeSet::from(["instance".to_owned()])
            };
            assert_series(web, name, &base, &labels);
        }
    }

    // Conditions made true on purpose. A refused request for content that does not exist
    // is counted with its reason and does not look like a capacity problem.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let missing = rt.block_on(StreamClient::new(a.control).fetch(
        "no-such-content",
        0,
        None,
        None,
        &mut Vec::new(),
        |_, _| {},
    ));
    assert!(missing.is_err());
    wait_for(
        web,
        "sum by (instance) (baton_stream_sessions_refused_total{reason=\"not_found\"})",
        positive,
    );
    let refused = rules_expr(&doc, "BatonStreamsRefused");
    assert!(
        query(web, &refused).is_empty(),
        "a 404 is not a capacity refusal"
    );
    // A stopped stream worker raises BatonStreamWorkerDown (pending, then firing) for its
    // controller while the thread itself stays up.
    let token = baton::admin::auth::read_token_file(&a.dir.path().join("admin.token")).unwrap();
    baton::admin::call_with_token(
        a.admin,
        hyper::Method::POST,
        "/api/v1/controllers/1/stop-streams",
        Some(&token),
    )
    .unwrap();
    wait_for(web, "ALERTS{alertname=\"BatonStreamWorkerDown\"}", |s| {
        s["metric"]["controller"] == "1" && s["metric"]["instance"] == a.admin.to_string()
    });
    let down = query(web, &rules_expr(&doc, "BatonControllerDown"));
    assert!(
        down.is_empty(),
        "the controller thread still runs: {down:?}"
    );
}

/// The `expr` of alert `name`.
fn rules_expr(doc: &serde_json::Value, name: &str) -> String {
    doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .find(|r| r["alert"] == name)
        .and_then(|r| r["expr"].as_str())
        .unwrap()
        .to_owned()
}

/// The operands of the top-level `and`s of `expr`, without their `on (...)` matching.
fn operands(expr: &str) -> Vec<String> {
    let flat = expr.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.split(" and ")
        .map(|o| {
            let o = o.trim();
            match o.strip_prefix("on (").and_then(|r| r.split_once(')')) {
                Some((_, rest)) => rest.trim().to_owned(),
                None => o.to_owned(),
            }
        })
        .collect()
}

/// `expr` without a trailing comparison with a number (`> 0.05`, `== 0`).
fn without_threshold(expr: &str) -> String {
    let e = expr.trim_end();
    let number = e.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    if number.len() == e.len() {
        return e.to_owned();
    }
    let head = number.trim_end();
    for op in ["==", "!=", ">=", "<=", ">", "<"] {
        if let Some(h) = head.strip_suffix(op) {
            return h.trim_end().to_owned();
        }
    }
    e.to_owned()
}
