//! `baton bench-stream`: the stream service measured against references from the same run.
//!
//! 1. One unpaced stream from a RAM volume as a ratio of a raw loopback TCP stream between
//!    two processes.
//! 2. The patent's point: the volume's one RAM device capped per controller handle, stream
//!    throughput with 1, 2 and 4 controllers (each controller reads at the capped rate, so
//!    the stream should run at about controllers x cap).
//! 3. Many paced streams: how many run with zero deadline misses, and the appliance's
//!    resident memory per stream.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{ChildGuard, free_port};
use stream::client::StreamClient;

/// `baton bench-stream` options.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamBenchArgs {
    /// Per-controller device read cap for the scaling measurement (bytes per second).
    #[arg(long, default_value_t = 40 << 20)]
    pub read_rate: u64,
    /// Paced streams for the concurrency measurement.
    #[arg(long, default_value_t = 2000)]
    pub streams: usize,
    /// Rate of each paced stream in bits per second.
    #[arg(long, default_value_t = 4_000_000)]
    pub rate: u64,
    /// Seconds each paced stream runs.
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
}

struct Appliance {
    _guard: ChildGuard,
    pid: u32,
    admin: SocketAddr,
    control: SocketAddr,
    _dir: tempfile::TempDir,
}

fn start(controllers: usize, read_rate: Option<u64>, budget: usize) -> anyhow::Result<Appliance> {
    let dir = tempfile::Builder::new()
        .prefix("baton-bench-stream")
        .tempdir()?;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    // Capped, the volume is one device: `read_rate` holds per device handle, and each
    // controller has its own handle, so the cap is each controller's storage rate. (A stripe
    // over four capped devices would let one controller read from all four at once.)
    let (n, size, volume) = match read_rate {
        Some(_) => (
            1,
            "512MiB",
            "{name: content, devices: [r0], block_size: 512}",
        ),
        None => (
            4,
            "256MiB",
            "{name: content, devices: [r0, r1, r2, r3], stripe_size: 256KiB, block_size: 512}",
        ),
    };
    let rate = read_rate
        .map(|r| format!(", read_rate: {r}"))
        .unwrap_or_default();
    let cfg = format!(
        "data_dir: {d}\ncontrollers: {{count: {controllers}}}\nnvme_tcp: {{base_port: 0, discovery_port: null}}\n\
         admin: {{address: \"{admin}\"}}\nlogging: {{level: warn}}\n\
         devices:\n{devs}\
         volumes:\n  - {volume}\n\
         stream: {{volume: content, control_port: {cp}, http_port: null, data_port_base: 0, block_size: 256KiB, window: 4, send_budget: {budget}, sync_timeout_ms: 5000}}\n",
        d = dir.path().display(),
        devs = (0..n)
            .map(|i| format!("  - {{name: r{i}, kind: ram, size: {size}{rate}}}\n"))
            .collect::<String>(),
        cp = control.port(),
    );
    let path = dir.path().join("bench.yaml");
    std::fs::write(&path, cfg)?;
    let child = Command::new(std::env::current_exe()?)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the appliance")?;
    let pid = child.id();
    let guard = ChildGuard(child);
    let t = Instant::now();
    while std::net::TcpStream::connect(control).is_err()
        || crate::admin::fetch_status(admin).is_err()
    {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the appliance did not come up");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Appliance {
        _guard: guard,
        pid,
        admin,
        control,
        _dir: dir,
    })
}

fn rt() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Stores `len` bytes as `name` and returns how long one unpaced fetch takes (best of 3).
fn one_stream(a: &Appliance, name: &str, len: usize) -> anyhow::Result<f64> {
    let c = StreamClient::new(a.control);
    let rt = rt()?;
    let data: Vec<u8> = (0..len)
        .map(|i| u8::try_from(i % 251).unwrap_or(0))
        .collect();
    rt.block_on(c.put(name, len as u64, &data[..], |_| {}))?;
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let t = Instant::now();
        let stats = rt.block_on(c.fetch(name, 0, None, None, tokio::io::sink(), |_, _| {}))?;
        best = best.max(stats.bytes as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    Ok(best)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn metric(a: &Appliance, name: &str) -> anyhow::Result<f64> {
    let body = crate::admin::call(a.admin, hyper::Method::GET, "/metrics")?;
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Runs the three measurements and prints them.
pub fn run(args: StreamBenchArgs) -> anyhow::Result<()> {
    // Enough descriptors for thousands of sessions (3 sockets each on both sides).
    let want = (args.streams as u64 * 4 + 1024).max(4096);
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ = nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            want.min(hard),
            want.min(hard),
        );
    }
    println!(
        "Baton stream benchmark ({} cores)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );

    // 1. One unpaced stream vs raw TCP.
    let a = start(2, None, 256)?;
    let mbps = one_stream(&a, "unpaced.bin", 256 << 20)?;
    drop(a);
    let raw = super::tcp::measure(1, Duration::from_secs(3))?;
    println!(
        "1. one unpaced stream, 2 controllers, RAM volume: {mbps:.0} MB/s; raw TCP stream between two processes: {raw:.0} MB/s; ratio {:.2}",
        mbps / raw
    );

    // 2. Scaling with capped device reads.
    let cap = args.read_rate as f64 / 1e6;
    println!("2. device reads capped at {cap:.0} MB/s per controller:");
    let mut base = 0.0;
    for n in [1usize, 2, 4] {
        let a = start(n, Some(args.read_rate), 256)?;
        // 48 MiB per controller: every run lasts about as long, so the buckets' first
        // tenth of a second (their burst) weighs the same in each.
        let mbps = one_stream(&a, "scaling.bin", n * (48 << 20))?;
        if n == 1 {
            base = mbps;
        }
        println!(
            "   {n} controller(s): {mbps:.0} MB/s = {:.2} x one controller ({:.0}% of {n} x cap)",
            mbps / base,
            100.0 * mbps / (cap * n as f64)
        );
    }

    // 3. Many paced streams.
    let a = start(2, None, args.streams + 16)?;
    let item_len = usize::try_from(args.rate / 8 * args.seconds).unwrap_or(1 << 20);
    let c = StreamClient::new(a.control);
    let rt = rt()?;
    let data = vec![0x47u8; item_len];
    rt.block_on(c.put("paced.ts", item_len as u64, &data[..], |_| {}))?;
    let rss0 = rss_kib(a.pid);
    let misses0 = metric(&a, "baton_stream_deadline_misses_total")?;
    let t = Instant::now();
    let (done, failed, peak) = rt.block_on(async {
        let mut tasks = Vec::with_capacity(args.streams);
        for _ in 0..args.streams {
            let rate = args.rate;
            tasks.push(tokio::spawn(async move {
                c.fetch(
                    "paced.ts",
                    0,
                    None,
                    Some(rate),
                    tokio::io::sink(),
                    |_, _| {},
                )
                .await
            }));
        }
        // Sample the appliance's memory while every stream runs.
        tokio::time::sleep(Duration::from_secs(args.seconds / 2)).await;
        let peak = rss_kib(a.pid);
        let (mut done, mut failed) = (0usize, 0usize);
        for t in tasks {
            match t.await {
                Ok(Ok(_)) => done += 1,
                _ => failed += 1,
            }
        }
        (done, failed, peak)
    });
    let elapsed = t.elapsed().as_secs_f64();
    let misses = metric(&a, "baton_stream_deadline_misses_total")? - misses0;
    let per_stream = (peak.saturating_sub(rss0)) as f64 / args.streams.max(1) as f64;
    println!(
        "3. {} paced streams at {:.1} Mbit/s ({:.0} MB/s in all) for {} s: {done} completed, {failed} failed, {misses:.0} blocks late (deadline misses) in {elapsed:.1} s; appliance memory {per_stream:.0} KiB per stream (RSS {} MiB -> {} MiB)",
        args.streams,
        args.rate as f64 / 1e6,
        args.streams as f64 * args.rate as f64 / 8e6,
        args.seconds,
        rss0 / 1024,
        peak / 1024,
    );
    Ok(())
}
