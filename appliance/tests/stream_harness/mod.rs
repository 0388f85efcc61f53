//! The real `baton serve` with a stream service, for the stream test files: start, crash and
//! restart on the same data, HTTP and raw-socket helpers, and the process's RSS and
//! descriptor counts.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use stream::client::{ClientError, StreamClient};

/// The tests' content block size.
pub const BS: usize = 64 * 1024;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What to vary in the appliance's configuration.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Controllers.
    pub controllers: usize,
    /// Environment of the process.
    pub env: Vec<(String, String)>,
    /// Size of each of the two devices of the content volume.
    pub device_size: &'static str,
    /// More keys of the `stream` section (`", catalog_entries: 2048"`).
    pub stream_extra: String,
    /// The `limits` section's keys (`"send_timeout_ms: 1000"`), empty for the defaults.
    pub limits: String,
    /// The watchdog's `stream.sync_timeout_ms`.
    pub sync_timeout_ms: u64,
}

impl Opts {
    /// `controllers` controllers, 64 MiB devices, default limits.
    pub fn new(controllers: usize) -> Self {
        Self {
            controllers,
            env: Vec::new(),
            device_size: "64MiB",
            stream_extra: String::new(),
            limits: String::new(),
            sync_timeout_ms: 500,
        }
    }
}

/// A running appliance.
pub struct Baton {
    pub child: Child,
    pub admin: SocketAddr,
    pub control: SocketAddr,
    pub http: SocketAddr,
    pub dir: PathBuf,
    pub cfg: PathBuf,
    env: Vec<(String, String)>,
}

fn config(
    dir: &Path,
    o: &Opts,
    admin: SocketAddr,
    control: SocketAddr,
    http: SocketAddr,
) -> String {
    let limits = if o.limits.is_empty() {
        String::new()
    } else {
        format!("limits: {{{}}}\n", o.limits)
    };
    format!(
        "data_dir: {d}\ncontrollers: {{count: {n}, pin: false}}\nnvme_tcp: {{base_port: 0, discovery_port: null}}\n\
         admin: {{address: \"{admin}\"}}\nlogging: {{level: warn}}\n{limits}\
         devices:\n  - {{name: c0, kind: file, path: c0.img, size: {sz}}}\n  - {{name: c1, kind: file, path: c1.img, size: {sz}}}\n\
         volumes:\n  - {{name: content, devices: [c0, c1], stripe_size: 64KiB, block_size: 512}}\n\
         stream: {{volume: content, control_port: {cp}, http_port: {hp}, data_port_base: 0, block_size: 64KiB, window: 4, sync_timeout_ms: {st}{extra}}}\n",
        d = dir.display(),
        n = o.controllers,
        sz = o.device_size,
        cp = control.port(),
        hp = http.port(),
        st = o.sync_timeout_ms,
        extra = o.stream_extra,
    )
}

impl Baton {
    /// Starts with `controllers` controllers and the default options.
    pub fn start(controllers: usize, env: &[(&str, &str)]) -> Self {
        let mut o = Opts::new(controllers);
        o.env = env
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        Self::start_with(&o)
    }

    /// Starts with `o`.
    pub fn start_with(o: &Opts) -> Self {
        let dir = tempfile::tempdir().unwrap().keep();
        let ip = "127.0.0.1";
        let admin: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
        let control: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
        let http: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
        let cfg = dir.join("baton.yaml");
        std::fs::write(&cfg, config(&dir, o, admin, control, http)).unwrap();
        let mut b = Self {
            child: spawn(&cfg, &o.env),
            admin,
            control,
            http,
            dir,
            cfg,
            env: o.env.clone(),
        };
        b.wait_up();
        b
    }

    /// Waits (with a deadline) until the control port and the admin API answer.
    ///
    /// The test's fixed ports were free ephemeral ports when picked; while baton is down
    /// between a kill and a restart, an outgoing connection of another test may take one
    /// as its local port for a moment. Such a start (EADDRINUSE in the log) is retried.
    pub fn wait_up(&mut self) {
        let t = Instant::now();
        while TcpStream::connect(self.control).is_err()
            || baton::admin::fetch_status(self.admin).is_err()
        {
            if let Some(st) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.join("baton.log")).unwrap_or_default();
                let in_use = log
                    .lines()
                    .last()
                    .is_some_and(|l| l.contains("Address already in use"));
                assert!(
                    in_use && t.elapsed() < Duration::from_secs(30),
                    "baton exited: {st}"
                );
                std::thread::sleep(Duration::from_millis(200));
                self.child = spawn(&self.cfg, &self.env);
                continue;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "baton did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 and reap.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts again on the same data (after [`Baton::kill`]).
    pub fn restart(&mut self) {
        self.child = spawn(&self.cfg, &self.env);
        self.wait_up();
    }

    /// kill -9, then start again on the same data.
    pub fn crash_and_restart(&mut self) {
        self.kill();
        self.restart();
    }

    /// A client of its stream service.
    pub fn client(&self) -> StreamClient {
        StreamClient::new(self.control)
    }

    /// Opens the content store from the configuration while the process is down and checks
    /// it: disjoint extents inside the data area, every item's data matching its CRC.
    pub fn check_store(&self) -> stream::store::CheckReport {
        let config = baton::config::Config::load(&self.cfg).unwrap();
        let backplane = config.open_backplane().unwrap();
        let st = config.stream.as_ref().unwrap();
        let vol = backplane.volume(&st.volume).unwrap();
        let store = stream::store::ContentStore::open(
            vol.open_blocking("check-store", 0).unwrap(),
            st.block_size.bytes(),
            st.catalog_entries,
        )
        .unwrap();
        store.check().unwrap()
    }

    /// A destructive admin action (with the appliance's generated bearer token).
    pub fn admin_post(&self, path: &str) {
        let token = baton::admin::auth::read_token_file(&self.dir.join("admin.token")).unwrap();
        baton::admin::call_with_token(self.admin, hyper::Method::POST, path, Some(&token)).unwrap();
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("baton.log")).unwrap_or_default()
    }

    /// Resident set size of the process, bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib * 1024
    }

    /// Open descriptors of the process.
    pub fn descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// Stream sessions in `baton status`.
    pub fn sessions(&self) -> usize {
        baton::admin::fetch_status(self.admin)
            .unwrap()
            .sessions
            .len()
    }

    /// A stream metric's value (0 if absent).
    pub fn metric(&self, name: &str) -> u64 {
        let text = String::from_utf8(
            baton::admin::call(self.admin, hyper::Method::GET, "/metrics")
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    }

    /// Waits up to `secs` for `cond`; false if it never held.
    pub fn eventually(&self, secs: u64, mut cond: impl FnMut() -> bool) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        cond()
    }
}

/// Starts `baton serve`; its log (warnings and errors) goes to `baton.log` beside the
/// configuration.
fn spawn(cfg: &Path, env: &[(String, String)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.with_file_name("baton.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--config"])
        .arg(cfg)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

impl Drop for Baton {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // Keep the evidence of a failed test: its data and baton.log.
            eprintln!("kept {} (baton.log inside)", self.dir.display());
            if let Ok(log) = std::fs::read_to_string(self.dir.join("baton.log")) {
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!("baton.log (last lines):");
                for l in tail.iter().rev() {
                    eprintln!("  {l}");
                }
            }
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A current-thread runtime.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Deterministic test content.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    baton_tests::pattern(len, seed)
}

/// SHA-256.
pub fn sha(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

/// Stores `d` as `name` (panics on failure).
pub async fn put(c: &StreamClient, name: &str, d: &[u8]) {
    c.put(name, d.len() as u64, d, |_| {}).await.unwrap();
}

/// Fetches through the framed face: the bytes and the re-plans followed.
pub async fn fetch(
    c: &StreamClient,
    name: &str,
    offset: u64,
    length: Option<u64>,
    rate: Option<u64>,
) -> Result<(Vec<u8>, u32), ClientError> {
    let mut out = Vec::new();
    let stats = c
        .fetch(name, offset, length, rate, &mut out, |_, _| {})
        .await?;
    Ok((out, stats.replans))
}

/// A plain HTTP/1.1 GET; returns status line, headers and body.
pub fn http_get(addr: SocketAddr, path: &str, range: Option<&str>) -> (String, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{range}\r\n").unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(all.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head.lines().next().unwrap_or("").to_owned();
    (status, head, all[split..].to_vec())
}

/// Reads one `\n`-terminated line (byte by byte, so nothing after it is consumed).
pub fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while s.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Opens a framed session on a raw control connection: the connection and the reply.
pub fn open_raw(
    control: SocketAddr,
    name: &str,
    rate: Option<u64>,
) -> (TcpStream, serde_json::Value) {
    let mut s = TcpStream::connect(control).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let rate = rate.map(|r| format!(",\"rate\":{r}")).unwrap_or_default();
    writeln!(s, "{{\"op\":\"open\",\"name\":\"{name}\"{rate}}}").unwrap();
    let line = read_line(&mut s);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
    (s, v)
}

/// Attaches raw data channels for an OPEN reply (one per planned controller), without
/// reading any frame.
pub fn attach_raw(info: &serde_json::Value) -> Vec<TcpStream> {
    let session = info["session"].as_u64().unwrap();
    let secret = stream::proto::unhex(info["secret"].as_str().unwrap()).unwrap();
    let mut planned: Vec<usize> = info["plan"]["controllers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap() as usize)
        .collect();
    planned.sort_unstable();
    planned.dedup();
    planned
        .into_iter()
        .map(|c| {
            let port = info["data_ports"][c].as_u64().unwrap() as u16;
            let mut d = TcpStream::connect(("127.0.0.1", port)).unwrap();
            d.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            d.write_all(&stream::proto::Attach { session, secret }.encode())
                .unwrap();
            let mut ack = [0u8; 1];
            d.read_exact(&mut ack).unwrap();
            assert_eq!(ack[0], 0, "attached");
            d
        })
        .collect()
}
